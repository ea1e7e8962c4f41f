"""Fine-tuning from starting networks (SANE's and WeightCLIP's headline measure): val accuracy
after each of a few epochs of Adam on the task, with the zoo's own jitted cohort step (same
shapes as the zoo's, so the zoo's compiled step is reused from the persistent XLA cache)."""
import jax
import numpy as np

from wsjax.data.tasks import task_indices
from wsjax.models import inference
from wsjax.zoo import step as step_lib


def curves(module, starts, dataset, classes, val, *, epochs, learning_rate, batch_size, seed,
           strategy, slots, diverge_loss_factor):
    """{name: [val accuracy after e epochs for e in `epochs`]} (0 = no training) of each start in
    `starts` ({name: variables}), trained `slots` at a time on the task's train images;
    val = (images, local labels)."""
    tx = step_lib.make_optimizer()
    step = step_lib.make_cohort_step(module, tx, strategy, None, diverge_loss_factor)
    x_all = jax.device_put(dataset.x_train)
    gi, local = task_indices(dataset.y_train, classes)
    names, out = list(starts), {}
    for c in range(0, len(names), slots):
        group = names[c:c + slots]
        states = [step_lib.init_model_state(tx, starts[n], "adam", learning_rate, 0.0) for n in group]
        state = jax.device_put(step_lib.stack(states + [states[0]] * (slots - len(group))))
        active = np.arange(slots)[None] < len(group)  # [1, slots]: padding slots stay untouched
        acc, done = {}, 0
        for target in sorted(epochs):
            for epoch in range(done, target):
                perm = np.random.default_rng([seed, epoch]).permutation(len(gi))
                for i in range(len(gi) // batch_size):
                    pick = perm[i * batch_size:(i + 1) * batch_size]
                    batch = dict(idx=np.broadcast_to(gi[pick], (1, slots, batch_size)).astype(np.int32),
                                 label=np.broadcast_to(local[pick], (1, slots, batch_size)),
                                 active=active)
                    state, _ = step(state, x_all, batch)
            done = target
            current = {k: jax.tree_util.tree_map(np.asarray, state[k]) for k in ("params", "batch_stats")}
            z = inference.logits_stack(module, current, val[0])
            acc[target] = inference.scores_stack(z, val[1])[1]
        for m, n in enumerate(group):
            out[n] = [float(acc[e][m]) for e in epochs]
    return out
