"""Benchmark stage `bench_zoo`: N zoo models trained one after another vs by the batched step.

`python -m launch.main --config=configs/bench/zoo.py[:tiny] --workdir=DIR`; presets 'tiny' (CI)
and default (the demo zoo's size: embedded MNIST, width 4, 16 px, batch 64).
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
    c.steps_per_call = z.steps_per_call
    c.compile_cache = ""   # timings include compilation honestly: no persistent cache
    c.num_models = 8
    c.steps = 40           # timed steps per model
    c.matmul_size = 2048   # the peak-FLOP/s reference matmul is [n, n] x [n, n] fp32
    if preset == "tiny":
        c.num_models = 4
        c.steps = 16
        c.matmul_size = 1024
    elif preset != "default":
        raise ValueError(f"unknown bench_zoo preset {preset!r}: use 'tiny' or 'default'")
    return c
