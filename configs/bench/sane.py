"""Benchmark stage `bench_sane`: the SANE train step fed three ways on the same synthetic zoo.

`python -m launch.main --config=configs/bench/sane.py[:tiny|:accelerator] --workdir=DIR`; presets
'tiny' (CI), default (the demo zoo's ResNet-18, width 4, and the default SANE) and 'accelerator'
(width 64, the cifar10 zoo's model, and SANE's accelerator preset, for a GPU/TPU host).
"""
import ml_collections

from configs import sane, zoo


def get_config(arg=None):
    preset = arg or "default"
    if preset not in ("tiny", "default", "accelerator"):
        raise ValueError(f"unknown bench_sane preset {preset!r}: use 'tiny', 'default' or 'accelerator'")
    z = zoo.get_config({"tiny": "tiny", "default": None, "accelerator": "cifar10"}[preset])
    c = ml_collections.ConfigDict()
    c.stage = "bench_sane"
    c.preset = preset
    c.seed = 0
    c.sane = sane.get_config(None if preset == "default" else preset)
    c.model = z.model           # the zoo networks' architecture (their values are random)
    c.num_classes = z.tasks.k
    c.image_shape = (z.data.resolution, z.data.resolution, 3 if preset == "accelerator" else 1)
    c.num_snapshots = {"tiny": 16, "default": 864, "accelerator": 128}[preset]
    c.steps = {"tiny": 4, "default": 40, "accelerator": 20}[preset]  # timed steps per arm
    # 'networks' (whole networks copied and tokenised every step: the stage before the token
    # store), 'host' (token windows gathered on the host), 'device' (gathered on the device)
    c.arms = ("networks", "host", "device")
    c.matmul_size = 1024 if preset == "tiny" else 4096  # the peak matmul [n, n] x [n, n], in SANE's dtype
    return c
