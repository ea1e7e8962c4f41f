"""Benchmark stage `bench_zoo`: N zoo models trained one after another vs by the batched step.

`python -m launch.main --config=configs/bench/zoo.py[:tiny] --workdir=DIR`; presets 'tiny' (CI),
default (the demo zoo's size: embedded MNIST, width 4, 16 px, batch 64) and 'accelerator' (the
vmap/bf16 path at the thesis zoo's model size, for GPU/TPU; lowered and compiled on CPU in tests).
"""
import ml_collections

from configs import zoo


def get_config(arg=None):
    preset = arg or "default"
    z = zoo.get_config("tiny" if preset == "tiny" else None)
    c = ml_collections.ConfigDict()
    c.stage = "bench_zoo"
    c.preset = preset
    c.seed = 0
    c.data = z.data
    c.tasks = z.tasks
    c.model = z.model
    c.batch_size = z.train.batch_size
    c.strategy = z.strategy
    c.cohort_size = z.cohort_size
    c.workers = z.workers
    c.steps_per_call = z.steps_per_call
    c.baseline_conv = "xla"  # the sequential baseline's convolution (model.conv: the batched one's)
    c.compile_cache = ""   # timings include compilation honestly: no persistent cache
    c.num_models = 8
    c.steps = 40           # timed steps per model
    c.matmul_size = 2048   # the peak-FLOP/s reference matmul is [n, n] x [n, n] in model.dtype
    # The zoo stage run on num_models models for its split of training, snapshot evaluation and
    # saving time: this zoo config's schedule and splits, the benchmark's data, tasks, model,
    # trainer (strategy, cohort_size, workers, steps_per_call), seed and num_models.
    c.zoo_split = True
    c.zoo_run = z
    c.zoo_run.model_splits.update(val=1, test=1)
    # The printed ESTIMATE of a thesis-size zoo's training time (XLA's FLOP count, no run).
    c.estimate = ml_collections.ConfigDict(dict(
        zoo=zoo.get_config("imagenet"),
        channels=3,              # TFDS ImageNet is RGB
        images_per_class=1300,   # ImageNet-1k train images per class (732-1,300; most have 1,300)
        peak_tflops=989.0,       # one H100 SXM, dense bf16
        utilisation=0.4,
    ))
    if preset == "tiny":
        c.num_models = 4
        c.zoo_run.train.snapshot_steps = (0, 4)
        c.steps = 16
        c.matmul_size = 1024
    elif preset == "accelerator":
        # The GPU/TPU path: the imagenet zoo's model (width 64, bf16) at 64 px, vmapped cohorts of
        # 64 per device (embedded MNIST resized: one input channel, which only the stem sees).
        z = zoo.get_config("imagenet")
        c.model = z.model
        c.model.conv = "xla"  # what 'auto' picks on GPU/TPU, also when tests lower it on CPU
        c.data.resolution = z.data.resolution
        c.strategy = "vmap"
        c.cohort_size = 64
        c.num_models = 128
        c.matmul_size = 8192
        c.zoo_split = False  # no embedded-MNIST zoo run at this size
    elif preset != "default":
        raise ValueError(f"unknown bench_zoo preset {preset!r}: use 'tiny', 'default' or 'accelerator'")
    return c
