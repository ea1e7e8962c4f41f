"""Several processes on this machine (JAX's distributed runtime, CPU collectives over gloo): the
tiny zoo built by 2 processes, one CPU device each, is the 1-process zoo model for model."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from wsjax.zoo import snapshots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 600  # two processes on 2 cores shared with the rest of the suite


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_processes(workdir, num_processes=2, *overrides):
    """Runs `launch.main --config=configs/zoo.py:tiny` as `num_processes` processes joined through
    127.0.0.1; returns each one's output (stdout and stderr)."""
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "launch.main", "--config=configs/zoo.py:tiny", f"--workdir={workdir}",
         f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
         f"--process_id={i}", *overrides],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(num_processes)]
    try:
        outs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{out[-3000:]}"
    return outs


def _zoo(workdir):
    rows = snapshots.read_manifest(workdir)
    return rows, {m: snapshots.load_snapshots(workdir, m) for m in sorted({r["model_id"] for r in rows})}


def test_two_processes_build_the_same_zoo_as_one_process(tiny_zoo, tmp_path):
    workdir = str(tmp_path / "w")
    outs = launch_processes(workdir)
    assert "jax.distributed: 2 processes, 2 devices" in outs[0]
    assert "jax.distributed" not in outs[1] and "zoo models" not in outs[1]  # process 0 reports
    rows, weights = _zoo(workdir)
    ref_rows, ref_weights = _zoo(tiny_zoo[0])
    # Bitwise: on CPU each cohort is one model (a padding slot on the other device), stepped by the
    # same per-device program as in the 1-process zoo, and every model's batches, seed and
    # evaluation are its own. (The tiny preset uses XLA's convolutions: see models.build on 'auto'.)
    assert rows == ref_rows
    assert weights.keys() == ref_weights.keys()
    for m in weights:
        jax.tree_util.tree_map(np.testing.assert_array_equal, weights[m], ref_weights[m])
    log = [json.loads(line) for line in open(os.path.join(workdir, "zoo", "log.jsonl"))]
    assert len(log) == len({(e["cohort"], e["epoch"]) for e in log})  # one writer: no line twice
    assert not os.path.exists(os.path.join(workdir, "zoo", "cohorts"))
    # a rerun of the same command on a finished zoo changes nothing
    manifest = os.path.join(workdir, "zoo", "models.csv")
    mtime = os.path.getmtime(manifest)
    launch_processes(workdir)
    assert os.path.getmtime(manifest) == mtime
