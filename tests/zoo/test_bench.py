"""The zoo benchmark: the CPU run writes what it claims, and the accelerator path (vmap cohorts,
bf16 compute, sharded over a models mesh) lowers and compiles on CPU devices without an accelerator."""
import json
import os
import subprocess
import sys

import numpy as np

from configs.bench import zoo as bench_configs
from wsjax.zoo import bench
from wsjax.zoo import snapshots

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_estimate_is_the_xla_flop_count_times_the_zoo_images():
    config = bench_configs.get_config("tiny").estimate
    e = bench.estimate_zoo(config)
    z = config.zoo
    images = z.num_models * z.train.max_epoch_mean * z.tasks.k * 1300 * (1 - z.data.val_fraction)
    flops = bench.train_flops_per_image(z.model, z.tasks.k, z.train.batch_size, (64, 64, 3))
    assert e["zoo_preset"] == "imagenet" and e["train_flops_per_image"] == flops
    assert np.isclose(e["train_images"], images) and np.isclose(e["total_flop"], flops * images)
    assert np.isclose(e["seconds"], e["total_flop"] / (989e12 * 0.4))
    assert 0.5e9 < flops < 1e9  # a 64-px ResNet-18 step: ~3x its ~0.23 GFLOP forward pass


def test_flop_count_grows_with_the_square_of_the_width():
    config = bench_configs.get_config("tiny")
    def flops():
        return bench.train_flops_per_image(config.model, config.tasks.k, config.batch_size, (12, 12, 1))

    narrow = flops()
    config.model.width *= 2
    assert 3.0 < flops() / narrow < 4.0  # convs: x4, rest less


# The accelerator preset at a narrower width (the path, not the size, is under test: width 64
# takes ~2 min to compile here) with 2 models per device over 8 CPU devices.
_LOWER = """
import jax, json, numpy as np
from configs.bench import zoo
from wsjax.zoo import bench
c = zoo.get_config('accelerator'); c.model.width = 8; c.cohort_size = 2
compiled, state, batch = bench.lower_cohort_step(c, (64, 64, 1))
out_state, loss = compiled.out_info
leaves = lambda t: jax.tree_util.tree_leaves_with_path(t)
rows = [(jax.tree_util.keystr(p), a.shape, str(a.dtype), b.shape, str(b.dtype), str(b.sharding.spec))
        for (p, a), (_, b) in zip(leaves(state), leaves(out_state))]
hlo = compiled.as_text()
print(json.dumps(dict(devices=jax.device_count(), rows=rows,
                      bf16_convs='bf16' in hlo and 'convolution(' in hlo,
                      loss=[loss.shape, str(loss.dtype), str(loss.sharding.spec)])))
"""


def test_accelerator_preset_lowers_and_compiles_over_eight_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _LOWER], cwd=REPO, env=env, check=True, timeout=600,
                         capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    assert r["devices"] == 8 and r["bf16_convs"]
    assert len(r["rows"]) > 100  # every leaf of params, batch_stats, opt_state and the flag
    for path, shape_in, dtype_in, shape_out, dtype_out, spec in r["rows"]:
        assert shape_in == shape_out and shape_in[0] == 16, path          # 2 models x 8 devices
        assert dtype_in == dtype_out, path                                # no silent bf16 state
        assert spec == "P('models',)", path
    assert r["loss"] == [[1, 16], "float32", "P(None, 'models')"]
    kernels = [row for row in r["rows"] if row[0].endswith("['kernel']") and "params" in row[0]]
    assert kernels and all(row[2] == "float32" for row in kernels)       # bf16 compute, fp32 params


def test_tiny_run_writes_its_ratio_peak_share_and_the_zoo_stages_time_split(tmp_path):
    config = bench_configs.get_config("tiny")
    config.steps, config.matmul_size = 4, 256
    res = bench.run(config, str(tmp_path))
    with open(tmp_path / "bench_zoo" / "results.json") as f:
        assert json.load(f) == json.loads(json.dumps(res))
    assert res["ratio"] == res["batched_img_s"] / res["sequential_img_s"] and res["ratio"] > 0
    assert 0 < res["batched_peak_share"] < 1 and res["train_flops_per_image"] > 0
    z = res["zoo_stage"]
    assert z["models"] == 4 and z["wall_seconds"] > 0
    assert all(z[f"{k}_seconds"] > 0 for k in ("training", "evaluation", "saving"))
    assert np.isclose(sum(z[f"{k}_share"] for k in ("training", "evaluation", "saving")), 1.0)
    rows = snapshots.read_manifest(str(tmp_path / "bench_zoo" / "zoo_run"))
    assert len({r["model_id"] for r in rows}) == 4 and {r["step"] for r in rows} >= {0, 4}
