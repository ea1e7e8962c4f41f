"""The embedded default dataset encoder: penultimate features of the zoo's base network (one
ResNet-18 trained once on the train images of every dataset class, `zoo.pretrain`)."""
import jax


def feature_fn(zoo_config, workdir):
    """(images [N, H, W, C] -> features [N, 8 * width], description) of the zoo's base network."""
    from wsjax.zoo import pretrain
    module, variables = pretrain.base_network(zoo_config, workdir)
    apply = jax.jit(lambda v, x: module.apply(v, x, train=False, features=True))
    return lambda x: apply(variables, x)
