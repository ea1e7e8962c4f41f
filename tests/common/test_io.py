import json
import os

import numpy as np
import pytest

from wsjax.common import io


def test_atomic_writers_leave_only_the_finished_file(tmp_path):
    io.write_json(str(tmp_path / "a.json"), {"x": 1})
    io.savez(str(tmp_path / "b.npz"), x=np.arange(3))
    assert json.load(open(tmp_path / "a.json")) == {"x": 1}
    assert np.load(tmp_path / "b.npz")["x"].tolist() == [0, 1, 2]
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.npz"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = str(tmp_path / "a.json")
    io.write_json(path, {"x": 1})
    with pytest.raises(TypeError):
        io.write_json(path, {"x": object()})
    assert json.load(open(path)) == {"x": 1}
    assert os.listdir(tmp_path) == ["a.json"]


def test_savefig_writes_a_png(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure()
    io.savefig(fig, str(tmp_path / "f.png"), dpi=20)
    plt.close(fig)
    assert open(tmp_path / "f.png", "rb").read(4) == b"\x89PNG"


def test_metric_writer_trims_lines_past_the_restored_step(tmp_path):
    log = io.MetricWriter(str(tmp_path / "log.jsonl"))
    log.trim(0)  # no file yet: nothing to do
    for step in (10, 20, 30):
        log.write(step, loss=1.0 / step)
    log.trim(20)
    log.write(30, loss=0.5)
    assert [json.loads(line) for line in open(tmp_path / "log.jsonl")] == [
        {"step": 10, "loss": 0.1}, {"step": 20, "loss": 0.05}, {"step": 30, "loss": 0.5}]
