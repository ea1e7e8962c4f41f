"""The resumable train loop the AE and SANE stages share: steps from the last checkpoint to the
end, a JSONL log line every `log_every` steps, and every `checkpoint_every` steps (and the last) a
score on validation data that keeps the best params, then a checkpoint of it all."""
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from wsjax.common import checkpoints, io


def train_keep_best(step_fn, inputs, check, state, t, *, schedule, directory, log_path, stage,
                    init_is_candidate=False):
    """Trains `state` with `step_fn(state, *inputs(step)) -> (state, metrics)` to `t.steps`;
    `check(params)` -> {'loss': .., ...} scores params on validation data. `t` holds steps,
    log_every, checkpoint_every. With `init_is_candidate` the starting params compete too.
    Returns (best params, best val loss, its step)."""
    ckpt = dict(state=state, best_params=state.params, best_val=np.asarray(np.inf, np.float32),
                best_step=np.asarray(0, np.int32))
    manager, start, ckpt = checkpoints.resume(directory, ckpt, stage=stage)
    log = io.MetricWriter(log_path)
    state, best_params = ckpt["state"], ckpt["best_params"]
    best_val, best_step = float(ckpt["best_val"]), int(ckpt["best_step"])
    if init_is_candidate and not start:  # a fresh start writes step 0's line again
        log.trim(-1)
        v = check(state.params)
        best_val, best_params = v["loss"], jax.tree_util.tree_map(jnp.copy, state.params)
        log.write(0, **{f"val_{k}": x for k, x in v.items()})
    else:
        log.trim(start)
    bar = tqdm(range(start, t.steps), desc=f"{stage} train", unit="step", initial=start, total=t.steps)
    tic = time.time()
    for step in bar:
        state, m = step_fn(state, *inputs(step))
        if (step + 1) % t.log_every == 0:
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            bar.set_postfix(loss=f"{m['loss']:.4f}")
            log.write(step + 1, lr=float(schedule(step)), seconds=time.time() - tic, **m)
        if (step + 1) % t.checkpoint_every == 0 or step + 1 == t.steps:
            v = check(state.params)
            if v["loss"] < best_val:
                best_val, best_step = v["loss"], step + 1
                best_params = jax.tree_util.tree_map(jnp.copy, state.params)
            log.write(step + 1, **{f"val_{k}": x for k, x in v.items()})
            manager.save(step + 1, dict(state=state, best_params=best_params,
                                        best_val=np.asarray(best_val, np.float32),
                                        best_step=np.asarray(best_step, np.int32)))
    bar.close()
    manager.close()
    return best_params, best_val, best_step
