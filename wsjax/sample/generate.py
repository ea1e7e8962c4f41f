"""The thesis sampler: (class set, target result) -> z_proj (align) -> AE decoder -> inverse PCA ->
ResNet-18 variables. The conditional generators of `wsjax.generator` sit beside it."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from wsjax import ae, align, data, encoders, models, pca
from wsjax.common import config as config_lib


class Generator:
    """Everything sampling needs, loaded once from a workdir that ran zoo..align."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.zoo_config = config_lib.load(workdir, "zoo")
        self.dataset = data.load(self.zoo_config.data)
        self.module = models.build(self.zoo_config.model, self.zoo_config.tasks.k)
        self.encoder = encoders.dataset_encoder(config_lib.load(workdir, "align"), workdir, write=False)
        self.aligner = align.load(workdir)
        self.autoencoder = ae.load(workdir)
        self.pca = pca.load(workdir)
        latents = ae.load_latents(workdir)
        self.latent_std = latents["z"][latents["split"] == "train"].std(0)
        self._decode = jax.jit(jax.vmap(functools.partial(pca.decode, self.pca)))

    def latents(self, class_sets, losses, accuracies, *, key=None, noise=0.0):
        """z_proj [N, D] for N requests, plus `noise` x train-latent std of Gaussian noise."""
        feats = np.stack([self.encoder.task_features(tuple(c)) for c in class_sets])
        z = self.aligner.project(feats, np.asarray(losses, np.float32),
                                 np.asarray(accuracies, np.float32))
        if noise:
            z = z + noise * self.latent_std * jax.random.normal(key, z.shape)
        return jnp.asarray(z)

    def weights(self, z):
        """Stacked variables [N, ...] decoded from latents [N, D]."""
        return self._decode(self.autoencoder.decode(z))
