"""The base network of init scheme 'pretrained': one ResNet-18 (the zoo's width and stem) with a
head over all dataset classes, trained once on every train image, cached at zoo/base/ (Orbax) by
the zoo, or in the folder of a later stage that needs it (the probe encoder: align/base/)."""
import os

import jax
import numpy as np
from tqdm import tqdm

from wsjax import data, models
from wsjax.common import checkpoints
from wsjax.common.config import require
from wsjax.zoo import init as init_lib
from wsjax.zoo import step as step_lib
from wsjax.zoo import snapshots


def base_path(workdir):
    return os.path.join(snapshots.zoo_dir(workdir), "base")


def base_network(config, workdir, cache_dir=None):
    """(module, variables) of the base network for zoo `config`: the zoo's own if it trained one,
    else trained on the first call and cached under `cache_dir` (the calling stage's folder;
    default zoo/). `module.apply(variables, x, features=True)` gives penultimate features."""
    p = config.pretrain
    require(p.epochs >= 1, f"config.pretrain.epochs must be >= 1, got {p.epochs}")
    require(p.batch_size >= 1, f"config.pretrain.batch_size must be >= 1, got {p.batch_size}")
    require(p.learning_rate > 0, f"config.pretrain.learning_rate must be > 0, got {p.learning_rate}")
    dataset = data.load(config.data)
    module = models.build(config.model, dataset.num_classes)
    path = base_path(workdir)
    if cache_dir is not None and not checkpoints.exists(path):  # a stage writes only its own folder
        path = os.path.join(cache_dir, "base")
    if checkpoints.exists(path):
        return module, checkpoints.restore(path)
    variables = init_lib.random_init(module, dataset.image_shape,
                                     jax.random.fold_in(jax.random.key(config.init_seed), 2**31 - 1))
    tx = step_lib.make_optimizer()
    state = jax.device_put(step_lib.init_model_state(tx, variables, "adam", p.learning_rate, 0.0))
    step = step_lib.single_step(module, tx)
    x, y = dataset.x_train, dataset.y_train
    b = min(int(p.batch_size), len(x))
    rng = np.random.default_rng([config.init_seed, 7])
    for _ in tqdm(range(p.epochs), desc="pretrain base", leave=False):
        perm = rng.permutation(len(x))
        for s in range(len(x) // b):
            i = perm[s * b:(s + 1) * b]
            state, _ = step(state, x[i], y[i])
    variables = dict(params=state["params"], batch_stats=state["batch_stats"])
    variables = jax.tree_util.tree_map(np.asarray, variables)
    checkpoints.save(path, variables)
    return module, checkpoints.restore(path)
