"""Fine-tuning from a starting network (SANE's and WeightCLIP's headline measure): val accuracy
after each of a few epochs of training on the task, with the zoo's own jitted train step."""
import jax
import numpy as np

from wsjax.models import inference
from wsjax.zoo import step as step_lib


def curve(module, variables, train, val, *, epochs, learning_rate, batch_size, seed):
    """Val accuracy at each epoch count in `epochs` (0 = no training), Adam from `variables`.
    train, val: (images, local labels)."""
    tx = step_lib.make_optimizer()
    step = step_lib.single_step(module, tx)
    state = jax.device_put(step_lib.init_model_state(tx, variables, "adam", learning_rate, 0.0))
    (x, y), out, done = train, {}, 0
    for target in sorted(epochs):
        for epoch in range(done, target):
            perm = np.random.default_rng([seed, epoch]).permutation(len(x))
            for i in range(len(x) // batch_size):
                idx = perm[i * batch_size:(i + 1) * batch_size]
                state, _ = step(state, x[idx], y[idx])
        done = target
        current = {k: jax.device_get(state[k]) for k in ("params", "batch_stats")}
        out[target] = inference.loss_accuracy(module, current, *val)[1]
    return [out[e] for e in epochs]
