"""Stage `bench_zoo`: the same N models trained (a) one after another, each by a single-model jitted
step, and (b) by the batched zoo step; img/s, ratio, FLOPs/img (XLA cost analysis), GFLOP/s and the
share of a large matmul's peak (in the model's dtype) measured in the same run, and the zoo stage's
own split of training, snapshot evaluation and saving time on those models ->
workdir/bench_zoo/results.json."""
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from wsjax import data, models
from wsjax.common import config as config_lib
from wsjax.common import io, threads
from wsjax.common.config import require
from wsjax.zoo import init as init_lib
from wsjax.zoo import snapshots
from wsjax.zoo import step as step_lib
from wsjax.zoo import stage as zoo_stage


def matmul_peak(n, dtype="float32", repeats=5):
    """Best GFLOP/s of an [n, n] x [n, n] matmul in `dtype` (the model's compute dtype)."""
    f = jax.jit(lambda a, b: a @ b)
    a = jnp.ones((n, n), dtype)
    f(a, a).block_until_ready()
    best = min(_timed(lambda: f(a, a).block_until_ready()) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def host_flops(fn, *args):
    """XLA's FLOP count of jitted `fn` at `args`' shapes, compiled for the host CPU on every backend:
    the GPU compiler hands convolutions to cuDNN custom calls, which its cost analysis counts as 0
    (an H100 run reported 16 of a ResNet-18 step's 651 MFLOP/img)."""
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    specs = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), args)
    cost = fn.lower(*specs).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


def abstract_cohort(module, tx, image_shape, cohort, batch_size, mesh=None):
    """(state, batch) of one cohort step as ShapeDtypeStructs, sharded as the zoo shards them
    (state on 'models', batch on its model axis): nothing is materialised, so a thesis-size
    cohort lowers and compiles on a laptop."""
    variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1,) + tuple(image_shape)))
    one = dict(params=variables["params"], batch_stats=variables["batch_stats"],
               opt_state=jax.eval_shape(tx.init, variables["params"]),
               diverged=jax.ShapeDtypeStruct((), jnp.bool_))
    sharding = (lambda spec: None) if mesh is None else (lambda spec: NamedSharding(mesh, spec))
    state = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(
        (cohort,) + x.shape, x.dtype, sharding=sharding(P("models"))), one)
    batch = dict(idx=((1, cohort, batch_size), jnp.int32), label=((1, cohort, batch_size), jnp.int32),
                 active=((1, cohort), jnp.bool_))
    batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding(P(None, "models")))
             for k, (shape, dtype) in batch.items()}
    return state, batch


def lower_cohort_step(config, image_shape, num_images=4096):
    """The zoo's cohort step for `config` (strategy, model dtype, cohort_size per device over every
    device) lowered and compiled from abstract inputs: (compiled, abstract state, abstract batch)."""
    module = models.build(config.model, config.tasks.k)
    tx = step_lib.make_optimizer()
    mesh = step_lib.make_mesh(0) if jax.device_count() > 1 else None
    cohort = int(config.cohort_size) * jax.device_count()
    state, batch = abstract_cohort(module, tx, image_shape, cohort, int(config.batch_size), mesh)
    x = jax.ShapeDtypeStruct((num_images,) + tuple(image_shape), jnp.float32,
                             sharding=None if mesh is None else NamedSharding(mesh, P()))
    step = step_lib.make_cohort_step(module, tx, zoo_stage.resolve_strategy(config), mesh)
    return step.lower(state, x, batch).compile(), state, batch


def train_flops_per_image(model_config, num_classes, batch_size, image_shape):
    """XLA's count (`host_flops`) of one model's train step per image, for the model of
    `model_config` at these exact shapes and its dtype: compiled, never run."""
    module = models.build(model_config, num_classes)
    tx = step_lib.make_optimizer()
    state, _ = abstract_cohort(module, tx, image_shape, 1, batch_size)
    one = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), state)
    return host_flops(step_lib.single_step(module, tx), one,
                      jax.ShapeDtypeStruct((batch_size,) + tuple(image_shape), jnp.float32),
                      jax.ShapeDtypeStruct((batch_size,), jnp.int32)) / batch_size


def estimate_zoo(estimate):
    """An ESTIMATE, never a measurement, of the training FLOPs of the zoo `estimate.zoo` (a zoo
    config, e.g. the thesis-size 'imagenet' preset) and its time on an accelerator at
    `estimate.utilisation` of `estimate.peak_tflops`: XLA's FLOP count per image of the train step
    (`train_flops_per_image`, at the zoo's shapes and dtype) x num_models x mean epochs x train
    images per task (k x images_per_class x (1 - val_fraction)); snapshot evaluation is left out."""
    z = estimate.zoo
    shape = (int(z.data.resolution), int(z.data.resolution), int(estimate.channels))
    flops = train_flops_per_image(z.model, z.tasks.k, int(z.train.batch_size), shape)
    images = (int(z.num_models) * float(z.train.max_epoch_mean) * int(z.tasks.k)
              * float(estimate.images_per_class) * (1 - float(z.data.val_fraction)))
    total = flops * images
    return dict(zoo_preset=z.preset, train_flops_per_image=flops, train_images=images, total_flop=total,
                seconds=total / (float(estimate.peak_tflops) * 1e12 * float(estimate.utilisation)))


def _states(tx, variables, n, optimizer="adam"):
    return [step_lib.init_model_state(tx, variables, optimizer, 1e-3 * (1 + m / n), 1e-4) for m in range(n)]


def bench_sequential(module, tx, variables, x, batches):
    """(img/s, compile s, flops/img): every model its full run of steps, one after another."""
    steps, n, b = batches["idx"].shape
    step = step_lib.single_step(module, tx)
    states = [jax.device_put(s) for s in _states(tx, variables, n)]
    flops = host_flops(step, states[0], x[:b], batches["label"][0, 0]) / b
    t_compile = _timed(lambda: jax.block_until_ready(
        step(jax.device_put(_states(tx, variables, 1)[0]), x[batches["idx"][0, 0]],
             batches["label"][0, 0])))
    t0 = time.perf_counter()
    for m in range(n):
        s = states[m]
        for k in range(steps):
            s, loss = step(s, x[batches["idx"][k, m]], batches["label"][k, m])
        jax.block_until_ready(s)
    return steps * n * b / (time.perf_counter() - t0), t_compile, flops


def bench_batched(module, tx, variables, x, batches, strategy, cohort, steps_per_call, workers):
    """(img/s, compile s): cohorts of `cohort` models, `steps_per_call` steps per jitted call,
    `workers` cohorts at once (threads), as the zoo stage trains them."""
    steps, n, b = batches["idx"].shape
    require(n % cohort == 0, f"config.num_models={n} must be a multiple of config.cohort_size={cohort}")
    require(steps % steps_per_call == 0,
            f"config.steps={steps} must be a multiple of config.steps_per_call={steps_per_call}")
    step = step_lib.make_cohort_step(module, tx, strategy)
    x_dev = jax.device_put(x)
    chunks = [[{k: jax.device_put(v[i:i + steps_per_call, c:c + cohort]) for k, v in batches.items()}
               for i in range(0, steps, steps_per_call)] for c in range(0, n, cohort)]
    warm = jax.device_put(step_lib.stack(_states(tx, variables, cohort)))
    t_compile = _timed(lambda: jax.block_until_ready(step(warm, x_dev, chunks[0][0])))
    states = [jax.device_put(step_lib.stack(_states(tx, variables, cohort))) for _ in chunks]
    def train(c):
        s = states[c]
        for chunk in chunks[c]:
            s, loss = step(s, x_dev, chunk)
        jax.block_until_ready(s)

    t0 = time.perf_counter()
    threads.in_threads(train, range(len(chunks)), workers)
    return steps * n * b / (time.perf_counter() - t0), t_compile


def zoo_split(config, workdir):
    """Seconds of training, snapshot evaluation and saving (summed over the zoo's threads, as its
    cohorts log them, compiles included) when the zoo stage builds `config.num_models` models
    with the benchmark's data, model and trainer in workdir/bench_zoo/zoo_run; and their shares."""
    zoo = config.zoo_run.copy_and_resolve_references()
    for k in ("seed", "data", "tasks", "model", "strategy", "cohort_size", "workers", "steps_per_call",
              "compile_cache", "num_models"):
        zoo[k] = config[k]
    zoo.train.batch_size = config.batch_size
    run_dir = os.path.join(config_lib.stage_dir(workdir, "bench_zoo"), "zoo_run")
    shutil.rmtree(run_dir, ignore_errors=True)  # timed from scratch on every run
    t0 = time.perf_counter()
    zoo_stage.run(zoo, run_dir)
    wall = time.perf_counter() - t0
    with open(os.path.join(snapshots.zoo_dir(run_dir), "log.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    seconds = {k: sum(line[f"{k}_seconds"] for line in lines) for k in zoo_stage.SPENT}
    total = sum(seconds.values())
    return dict(models=int(zoo.num_models), wall_seconds=wall,
                **{f"{k}_seconds": v for k, v in seconds.items()},
                **{f"{k}_share": v / total for k, v in seconds.items()})


def run(config, workdir):
    """Runs the benchmark of `config` (configs/bench/zoo.py) and writes results.json."""
    require(config.num_models >= 1, f"config.num_models must be >= 1, got {config.num_models}")
    require(config.steps >= 1, f"config.steps must be >= 1, got {config.steps}")
    dataset = data.load(config.data)
    module = models.build(config.model, config.tasks.k)
    # the baseline: one model after another, with XLA's own convolution (same parameters)
    baseline_model = config.model.copy_and_resolve_references()
    baseline_model.conv = config.baseline_conv
    baseline = models.build(baseline_model, config.tasks.k)
    variables = init_lib.random_init(module, dataset.image_shape, jax.random.key(config.seed))
    tx = step_lib.make_optimizer()
    rng = np.random.default_rng(config.seed)
    n, b, steps = int(config.num_models), int(config.batch_size), int(config.steps)
    batches = dict(idx=rng.integers(0, len(dataset.x_train), (steps, n, b)).astype(np.int32),
                   label=rng.integers(0, config.tasks.k, (steps, n, b)).astype(np.int32),
                   active=np.ones((steps, n), bool))
    x = dataset.x_train
    strategy = zoo_stage.resolve_strategy(config)
    cohort = 1 if strategy == "sequential" else int(config.cohort_size)
    workers = threads.workers(config)
    step_lib.enable_compile_cache(config.get("compile_cache", ""))
    peak = matmul_peak(int(config.matmul_size), config.model.dtype)
    x_dev = jnp.asarray(x)
    seq, seq_compile, flops = bench_sequential(baseline, tx, variables, x_dev, batches)
    same = {}  # where the batched path computes convolutions otherwise, one after another with them
    if module.conv != baseline.conv:
        same["sequential_same_conv_img_s"] = bench_sequential(module, tx, variables, x_dev, batches)[0]
    bat, bat_compile = bench_batched(module, tx, variables, x, batches, strategy, cohort,
                                     int(config.steps_per_call), workers)
    res = dict(
        backend=jax.default_backend(), device=str(jax.devices()[0].device_kind),
        num_devices=jax.device_count(), width=int(config.model.width),
        resolution=int(config.data.resolution), batch_size=b, num_models=n, steps=steps,
        conv=module.conv, baseline_conv=baseline.conv, **same,
        strategy=strategy, cohort_size=cohort, workers=workers,
        steps_per_call=int(config.steps_per_call), optimizer="adam",
        sequential_img_s=seq, batched_img_s=bat, ratio=bat / seq,
        sequential_compile_s=seq_compile, batched_compile_s=bat_compile,
        train_flops_per_image=flops, sequential_gflop_s=seq * flops / 1e9,
        batched_gflop_s=bat * flops / 1e9, matmul_peak_gflop_s=peak,
        batched_peak_share=bat * flops / 1e9 / peak, sequential_peak_share=seq * flops / 1e9 / peak,
        estimate=estimate_zoo(config.estimate),
        zoo_stage=zoo_split(config, workdir) if config.zoo_split else None)
    z = config.estimate.zoo
    if (config.model.width, config.data.resolution) == (z.model.width, z.data.resolution):
        # this run trained the estimated zoo's model at its size: its images at the measured rate
        res["estimate"]["seconds_at_batched_rate"] = res["estimate"]["train_images"] / bat
    io.write_json(os.path.join(config_lib.stage_dir(workdir, "bench_zoo"), "results.json"), res, indent=2)
    print(f"bench_zoo {res['backend']} w{res['width']} {res['resolution']}px b{b} N={n}: "
          f"sequential[{baseline.conv}] {seq:.0f} img/s, "
          + (f"sequential[{module.conv}] {same['sequential_same_conv_img_s']:.0f} img/s, " if same else "")
          + f"batched[{module.conv}, {strategy} x{cohort}, {workers} threads, "
          f"{config.steps_per_call} steps/call] {bat:.0f} img/s, ratio {bat / seq:.2f}x, "
          f"{flops / 1e6:.2f} MFLOP/img, {res['batched_gflop_s']:.1f} GFLOP/s = "
          f"{100 * res['batched_peak_share']:.1f}% of matmul peak {peak:.0f} GFLOP/s")
    if res["zoo_stage"]:
        z = res["zoo_stage"]
        print(f"bench_zoo zoo stage, {z['models']} models in {z['wall_seconds']:.0f} s: "
              + ", ".join(f"{k} {z[k + '_seconds']:.0f} s ({100 * z[k + '_share']:.0f}%)"
                          for k in zoo_stage.SPENT) + " (summed over threads, compiles included)")
    e, c = res["estimate"], config.estimate
    print(f"ESTIMATE (XLA FLOP count, not a measurement): the '{e['zoo_preset']}' zoo trains "
          f"{e['train_images']:.3g} images x {e['train_flops_per_image'] / 1e9:.3f} GFLOP = "
          f"{e['total_flop']:.2g} FLOP: {e['seconds'] / 60:.1f} min at {100 * c.utilisation:.0f}% of "
          f"{c.peak_tflops:.0f} TFLOP/s"
          + (f"; at this run's batched rate (measured, training only): "
             f"{e['seconds_at_batched_rate'] / 3600:.1f} h" if "seconds_at_batched_rate" in e else ""))
    return res
