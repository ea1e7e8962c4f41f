"""The embedded default dataset encoder: penultimate features of the zoo's base network (one
ResNet-18 trained once on the train images of every dataset class, `zoo.pretrain`)."""
import os

import jax


def feature_fn(zoo_config, workdir):
    """images [N, H, W, C] -> features [N, 8 * width] of the zoo's base network (trained for the
    align stage, and kept in its folder, when the zoo has none)."""
    from wsjax.zoo import pretrain
    module, variables = pretrain.base_network(zoo_config, workdir, os.path.join(workdir, "align"))
    apply = jax.jit(lambda v, x: module.apply(v, x, train=False, features=True))
    return lambda x: apply(variables, x)
