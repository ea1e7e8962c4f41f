"""Stage `bench_sane`: the SANE train step fed three ways on one synthetic zoo, side by side.

    networks   each step copies its snapshots' whole networks to the device and tokenises them
               there (the stage before the token store; still the way with augment.permute)
    host       the tokenised zoo on the host: each step gathers its windows there and copies them
    device     the tokenised zoo on the device: each step's input is two index vectors

Steps/s and ms per step (inputs included, as the stage runs them), the inputs' own time, the
step's FLOPs (XLA:CPU's count) and its share of a matmul's peak in SANE's dtype, measured in the
same run -> workdir/bench_sane/results.json, and one summary line. The first arm's compile_s
includes the step's compilation; later arms reuse it.
"""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from wsjax import models
from wsjax.common import config as config_lib
from wsjax.common import io
from wsjax.common.config import require
from wsjax.sane import model as model_lib
from wsjax.sane import stage as sane_stage
from wsjax.sane import tokens as tokens_lib
from wsjax.zoo import bench as zoo_bench

STAGE = "bench_sane"
ARMS = ("networks", "host", "device")


def check_config(config):
    require(config.num_snapshots >= 2, f"config.num_snapshots must be >= 2, got {config.num_snapshots}")
    require(config.steps >= 1, f"config.steps must be >= 1, got {config.steps}")
    require(len(config.arms) >= 1 and set(config.arms) <= set(ARMS),
            f"config.arms must be a non-empty subset of {ARMS}, got {config.arms}")
    sane_stage.check_config(config.sane)


def synthetic_zoo(config):
    """[S, ...] stacked variables: one random init of the zoo's network, each snapshot a random
    scaling of it (the step's cost does not depend on the values)."""
    module = models.build(config.model, config.num_classes)
    variables = module.init(jax.random.key(config.seed), jnp.zeros((1,) + tuple(config.image_shape)))
    rng = np.random.default_rng(config.seed)
    s = config.num_snapshots
    return jax.tree_util.tree_map(
        lambda x: np.asarray(x)[None] * (1 + 0.1 * rng.standard_normal((s,) + (1,) * x.ndim, np.float32)),
        dict(variables))


def time_arm(step_fn, fresh_state, source, draws):
    """(compile seconds, seconds per step, seconds per step of the inputs alone) of `step_fn` fed
    by `source` on `draws` [(pick, start, key)], the first draw compiling."""
    state = fresh_state()
    tic = time.perf_counter()
    state, m = step_fn(state, source(*draws[0]), draws[0][1], draws[0][2])
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - tic
    tic = time.perf_counter()
    for pick, start, key in draws[1:]:
        state, m = step_fn(state, source(pick, start, key), start, key)
    jax.block_until_ready(m)
    step_s = (time.perf_counter() - tic) / (len(draws) - 1)
    tic = time.perf_counter()
    for d in draws[1:]:
        jax.block_until_ready(source(*d))
    return compile_s, step_s, (time.perf_counter() - tic) / (len(draws) - 1)


def run(config, workdir):
    check_config(config)
    c = config.sane
    stacked = synthetic_zoo(config)
    layout = tokens_lib.layout(sane_stage.take(stacked, 0), c.tokens.token_size)
    window = min(c.tokens.window, layout.num_tokens)
    tic = time.perf_counter()
    store, mean, std = sane_stage.token_store(layout, stacked, np.arange(config.num_snapshots))
    store_s = time.perf_counter() - tic
    module = model_lib.build(c, layout)
    # the step donates its state: each arm starts from a fresh one
    fresh = lambda: sane_stage.init_state(c, module, layout, window)[0]  # noqa: E731
    step_fn = sane_stage.make_train_step(sane_stage.make_loss_fn(module, layout, c))
    b = c.train.batch_size
    draws = [sane_stage.batch(config.seed, i, np.arange(config.num_snapshots), b, layout.num_tokens, window)
             for i in range(config.steps + 1)]
    clean = jax.ShapeDtypeStruct((1, b, window, layout.token_size), jnp.float32)
    # counted on the host CPU (zoo_bench.host_flops), where cuDNN's attention does not lower: with
    # flax's attention, the same function
    counted = c.copy_and_resolve_references()
    counted.model.attention = "xla"
    count_fn = sane_stage.make_train_step(
        sane_stage.make_loss_fn(model_lib.build(counted, layout), layout, c))
    flops = zoo_bench.host_flops(count_fn, jax.eval_shape(fresh), clean,
                                 jax.ShapeDtypeStruct((b,), jnp.int32), draws[0][2])
    on_device = sane_stage.fits_on_device(store.nbytes, c.tokens.device_share)
    sources = dict(networks=lambda: sane_stage.network_source(layout, mean, std, stacked, window, False),
                   host=lambda: sane_stage.window_source(store, window, False),
                   device=lambda: sane_stage.window_source(store, window, True))
    arms = {}
    for arm in config.arms:
        if arm == "device" and not on_device:  # the stage would keep it on the host too
            arms[arm] = None
            continue
        compile_s, step_s, input_s = time_arm(step_fn, fresh, sources[arm](), draws)
        arms[arm] = dict(steps_per_s=1 / step_s, ms_per_step=1e3 * step_s, input_ms=1e3 * input_s,
                         compile_s=compile_s, gflop_s=flops / step_s / 1e9)
    peak = zoo_bench.matmul_peak(int(config.matmul_size), c.model.dtype)
    for a in arms.values():
        if a:
            a["peak_share"] = a["gflop_s"] / peak
    base = (arms.get("networks") or {}).get("steps_per_s")
    attention = model_lib.attention_kernel(c.model.get("attention", "auto"), c.model.dtype)
    res = dict(backend=jax.default_backend(), device=str(jax.devices()[0].device_kind), attention=attention,
               width=int(config.model.width), num_snapshots=int(config.num_snapshots),
               num_tokens=layout.num_tokens, token_size=layout.token_size, window=window, batch_size=b,
               network_mib=sum(x[0].nbytes for x in jax.tree_util.tree_leaves(stacked)) / 2 ** 20,
               store_gib=store.nbytes / 2 ** 30, store_seconds=store_s, store_on_device=on_device,
               step_gflop=flops / 1e9, matmul_peak_gflop_s=peak, arms=arms,
               speedup={a: arms[a]["steps_per_s"] / base for a in arms if arms[a] and base})
    io.write_json(os.path.join(config_lib.stage_dir(workdir, STAGE), "results.json"), res, indent=2)
    print(f"bench_sane {res['backend']} ({res['device']}, {attention} attention) w{res['width']}, "
          f"{layout.num_tokens} tokens x "
          f"{layout.token_size}, window {window}, batch {b}, {res['step_gflop']:.1f} GFLOP/step, store "
          f"{res['store_gib']:.2f} GiB built in {store_s:.1f} s: "
          + "; ".join(f"{k} {a['ms_per_step']:.1f} ms/step (inputs {a['input_ms']:.1f} ms, "
                      f"{100 * a['peak_share']:.1f}% of {peak:.0f} GFLOP/s)" if a
                      else f"{k} skipped (the store is too large for the device)" for k, a in arms.items())
          + "".join(f", {k} {v:.2f}x" for k, v in res["speedup"].items() if k != "networks"))
    return res
