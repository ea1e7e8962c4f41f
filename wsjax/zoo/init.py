"""Where every zoo model starts (`config.init`).

'shared': one initialisation from `config.init_seed` for every model (saved at zoo/init/);
'per_model': each model its own init from (init_seed, model_id), as independent runs;
'pretrained': the body of one base ResNet-18 trained once on all classes (wsjax.zoo.pretrain) with
the shared init's fresh k-way head (the combined start is saved at zoo/init/).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

from wsjax.common import checkpoints
from wsjax.zoo import snapshots


def init_path(workdir):
    return os.path.join(snapshots.zoo_dir(workdir), "init")


def random_init(module, image_shape, key):
    variables = module.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32))
    return jax.tree_util.tree_map(np.asarray, dict(variables))


def _fresh_shared(config, module, image_shape, workdir):
    variables = random_init(module, image_shape, jax.random.key(config.init_seed))
    if config.init == "pretrained":
        from wsjax.zoo import pretrain
        _, base = pretrain.base_network(config, workdir)
        params = dict(base["params"])
        params["fc"] = variables["params"]["fc"]  # fresh k-way head
        variables = dict(params=params, batch_stats=base["batch_stats"])
    return variables


def initializer(config, module, image_shape, workdir):
    """model_id -> starting variables {'params', 'batch_stats'} (numpy) for `config.init`."""
    if config.init == "per_model":
        key = jax.random.key(config.init_seed)
        return lambda model_id: random_init(module, image_shape, jax.random.fold_in(key, model_id))
    path = init_path(workdir)
    if not checkpoints.exists(path):
        checkpoints.save(path, _fresh_shared(config, module, image_shape, workdir))
    shared = checkpoints.restore(path, stage="zoo")
    return lambda model_id: shared
