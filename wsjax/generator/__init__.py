"""Conditional generators of weights: (class set, requested val loss) -> ResNet-18 variables.

`load(workdir)` gives a `Conditional` fitted by the generator stage; `wsjax.generator.select`
keeps the best of many candidates by their loss on the prompt task's train images.
"""
import functools
import json
import os

import jax
import numpy as np

from wsjax import models, pca
from wsjax.common import config as config_lib
from wsjax.common import checkpoints
from wsjax.common.config import require
from wsjax.generator import features, flow, linear
from wsjax.generator import path as path_lib
from wsjax.models import inference

SAMPLERS = ("path", "ridge", "flow")  # plus 'thesis' (align + AE), in wsjax.sample.generate


def paths(workdir):
    d = os.path.join(workdir, "generator")
    return dict(state=os.path.join(d, "state"), meta=os.path.join(d, "meta.json"),
                metrics=os.path.join(d, "metrics.json"))


class Conditional:
    """The fitted generators of a workdir, each mapping requests to latents, and the decoder."""

    def __init__(self, workdir):
        p = paths(workdir)
        require(os.path.exists(p["metrics"]), f"{p['metrics']} not found: run the 'generator' "
                "stage with this --workdir first")
        self.config = config_lib.load(workdir, "generator")
        self.meta = json.load(open(p["meta"]))
        arrays = checkpoints.restore(p["state"])
        self.latent = linear.Latent(**arrays["latent"])
        self.ridge_map = linear.Ridge(**arrays["ridge"])
        self.path_model = path_lib.PathModel(linear.Ridge(**arrays["path"]["latent"]),
                                             linear.Ridge(**arrays["path"]["log_loss"]))
        self.flow_params = arrays["flow"]
        zoo_config = config_lib.load(workdir, "zoo")
        self.module = models.build(zoo_config.model, zoo_config.tasks.k)
        self.pca = pca.load(workdir)
        self._decode = jax.jit(jax.vmap(functools.partial(pca.decode, self.pca)))

    def _cls(self, classes, n):
        return np.repeat(features.class_features(classes, self.meta["num_classes"])[None], n, 0)

    def ridge(self, classes, losses):
        """[N, d]: the linear map's latent for each requested loss."""
        log_loss = np.log(np.asarray(losses, np.float32))
        x = features.request_features(self._cls(classes, len(log_loss)), log_loss,
                                      self.meta["centers"], self.meta["width"])
        return linear.predict(self.ridge_map, x)

    def path(self, classes):
        """(predicted path [J, d], its monotone log-loss curve [J]) of one class set."""
        z, curve = path_lib.predict(self.path_model, self._cls(classes, 1))
        return z[0], curve[0]

    def on_path(self, classes, losses):
        """[N, d]: the point of the predicted path where the loss curve meets each request."""
        z, curve = self.path(classes)
        return np.stack([path_lib.at(z, path_lib.position(curve, np.log(v))) for v in losses])

    def flow(self, classes, losses, key, num_samples=1):
        """[N * num_samples, d]: flow samples, `num_samples` per requested loss (request-major)."""
        f = self.config.flow
        log_loss = np.repeat(np.log(np.asarray(losses, np.float32)), num_samples)
        cond = np.concatenate([self._cls(classes, len(log_loss)),
                               features.fourier(log_loss, f.num_freqs)], 1)
        return flow.sample(self.flow_params, self.meta["flow_scale"], cond, key=key,
                           hidden=f.hidden, depth=f.depth, num_steps=f.sample_steps)

    def latents(self, sampler, classes, losses, key=None):
        """[N, d]: one latent per requested loss from `sampler` ('path' | 'ridge' | 'flow')."""
        require(sampler in SAMPLERS, f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if sampler == "flow":
            return self.flow(classes, losses, key)
        return self.ridge(classes, losses) if sampler == "ridge" else self.on_path(classes, losses)

    def candidates(self, classes, losses, key, *, per_segment, flow_samples):
        """[M, d]: the predicted path at `per_segment` points per segment, plus `flow_samples`
        flow samples per requested loss: the pool that keep-the-best chooses from."""
        z, _ = self.path(classes)
        pool = [path_lib.grid(z, per_segment)]
        if flow_samples:
            pool.append(self.flow(classes, losses, key, flow_samples))
        return np.concatenate(pool)

    def decode_coeffs(self, coeffs):
        """Stacked variables [N, ...] decoded from PCA coefficients [N, K]."""
        return inference.map_chunks(self._decode, np.asarray(coeffs, np.float32))

    def variables(self, z):
        """Stacked variables [N, ...] decoded from latents [N, d]."""
        return self.decode_coeffs(linear.decode(self.latent, z))


def load(workdir):
    return Conditional(workdir)
