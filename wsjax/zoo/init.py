"""Where every zoo model starts (`config.init`).

'shared': one initialisation from `config.init_seed` for every model (saved at zoo/init/);
'per_model': each model its own init from (init_seed, model_id), as independent runs;
'pretrained': the body of one base ResNet-18 trained once on all classes (wsjax.zoo.pretrain) with
the shared init's fresh k-way head (the combined start is saved at zoo/init/).

`config.init_methods` names the initializer of conv and dense kernels (biases and BatchNorm keep
flax's); the default, 'lecun_normal', is flax's own, so its inits are `module.init`'s draws.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from wsjax.common import checkpoints
from wsjax.zoo import snapshots


def init_path(workdir):
    return os.path.join(snapshots.zoo_dir(workdir), "init")


DEFAULT_METHOD = "lecun_normal"  # flax's kernel init: every zoo's method before the field existed
INIT_METHODS = (DEFAULT_METHOD, "normal", "uniform", "truncated_normal", "glorot_normal",
                "glorot_uniform", "he_normal", "he_uniform", "orthogonal")  # jax.nn.initializers


@functools.lru_cache(maxsize=None)
def _compiled_init(module, image_shape):
    """module.init(key, x) compiled once per process. A ResNet-18's init (60 random draws and a
    forward pass) took ~20 s on XLA:CPU whether run eagerly (every op compiled on first use) or
    jitted (~16 s of compile); at the backend's lowest optimisation level it compiles in ~3 s."""
    x = jax.ShapeDtypeStruct((1,) + image_shape, jnp.float32)
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}
    return jax.jit(module.init).lower(jax.random.key(0), x).compile(options)


def random_init(module, image_shape, key, method=DEFAULT_METHOD):
    """{'params', 'batch_stats'} (numpy) of `module.init(key)` (the same draws, to float rounding),
    its conv and dense kernels redrawn with jax.nn.initializers.<method>() unless `method` is
    flax's own."""
    image_shape = tuple(int(d) for d in image_shape)
    variables = _compiled_init(module, image_shape)(key, jnp.zeros((1,) + image_shape, jnp.float32))
    variables = jax.tree_util.tree_map(np.asarray, dict(variables))
    if method != DEFAULT_METHOD:
        variables["params"] = _redraw_kernels(variables["params"], method, jax.random.fold_in(key, 1))
    return variables


def _redraw_kernels(params, method, key):
    init = getattr(jax.nn.initializers, method)()  # conv kernels are HWIO: fan axes -2, -1
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    return jax.tree_util.tree_unflatten(treedef, [
        np.asarray(init(jax.random.fold_in(key, i), x.shape, x.dtype))
        if path[-1].key == "kernel" else x for i, (path, x) in enumerate(leaves)])


def _fresh_shared(config, module, image_shape, workdir):
    variables = random_init(module, image_shape, jax.random.key(config.init_seed),
                            config.init_methods[0])
    if config.init == "pretrained":
        from wsjax.zoo import pretrain
        _, base = pretrain.base_network(config, workdir)
        params = dict(base["params"])
        params["fc"] = variables["params"]["fc"]  # fresh k-way head
        variables = dict(params=params, batch_stats=base["batch_stats"])
    return variables


def initializer(config, module, image_shape, workdir):
    """(model_id, init method) -> starting variables {'params', 'batch_stats'} (numpy) for
    `config.init`; under 'shared' and 'pretrained' every model's method is the one shared init's
    (`config.init_methods` holds only it)."""
    if config.init == "per_model":
        key = jax.random.key(config.init_seed)
        return lambda model_id, method: random_init(
            module, image_shape, jax.random.fold_in(key, model_id), method)
    path = init_path(workdir)
    if not checkpoints.exists(path):
        checkpoints.save(path, _fresh_shared(config, module, image_shape, workdir))
    shared = checkpoints.restore(path, stage="zoo")
    return lambda model_id, method: shared
