import json
import os
import subprocess
import sys

import ml_collections
import pytest

from launch import main
from wsjax.common.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _launch(*args):
    return subprocess.run([sys.executable, "-m", "launch.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_unknown_stage_is_refused_in_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="config.stage must be one of"):
        main.run_stage(ml_collections.ConfigDict({"stage": "nope"}), str(tmp_path))


def _one_sentence(r):
    """The launcher's error: exit status 1 and a single line on stderr, no traceback."""
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.mark.parametrize("field", ["no_such_field", "tasks.no_such_field"])
def test_unknown_config_field_is_named_in_one_sentence(tmp_path, field):
    r = _launch("--config=configs/zoo.py:tiny", f"--config.{field}=3", f"--workdir={tmp_path}")
    assert f"--config.{field} names no field of configs/zoo.py:tiny" in _one_sentence(r)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("config,expected", [
    ("configs/zoo.py:huge", "unknown zoo preset 'huge': use 'tiny'"),
    ("configs/nope.py", "config file configs/nope.py not found"),
])
def test_unknown_preset_or_missing_config_file_is_one_sentence(tmp_path, config, expected):
    r = _launch(f"--config={config}", f"--workdir={tmp_path}")
    assert expected in _one_sentence(r)


@pytest.mark.parametrize("override,expected", [
    ("--config.num_models=abc", "--config.num_models=abc"),
    ("--config.tasks.held_out=a-b-c", "config.tasks.held_out must be class sets"),
])
def test_bad_value_is_one_sentence_naming_the_field(tmp_path, override, expected):
    r = _launch("--config=configs/zoo.py:tiny", override, f"--workdir={tmp_path}")
    assert expected in _one_sentence(r)


def test_read_only_workdir_is_one_sentence(tmp_path):
    if os.geteuid() == 0:  # root writes through file modes: use a read-only mount instead
        workdir = "/sys/wsjax-test"
    else:
        os.chmod(tmp_path, 0o500)
        workdir = str(tmp_path / "work")
    r = _launch("--config=configs/zoo.py:tiny", f"--workdir={workdir}")
    assert f"cannot create {workdir}/zoo" in _one_sentence(r)


def test_bad_field_value_stops_before_work_with_field_name(tmp_path):
    r = _launch("--config=configs/zoo.py:tiny", "--config.model.stem=huge", f"--workdir={tmp_path}")
    assert "config.model.stem" in _one_sentence(r)


def test_resolved_config_is_written_to_the_stage_dir(tmp_path):
    config = ml_collections.ConfigDict({"stage": "zoo", "seed": 3})
    from wsjax.common import config as config_lib
    path = config_lib.save(config, str(tmp_path), "zoo")
    assert json.load(open(path)) == {"seed": 3, "stage": "zoo"}
    assert config_lib.load(str(tmp_path), "zoo").seed == 3
    with pytest.raises(ConfigError, match="run the 'pca' stage"):
        config_lib.load(str(tmp_path), "pca")


def test_every_stage_config_gets_the_overwrite_field():
    for path in ("configs/zoo.py:tiny", "configs/pca.py", "configs/demo.py:tiny"):
        config = main.ConfigFileParser().parse(os.path.join(ROOT, path))
        assert config.overwrite is False and config.is_locked


def test_full_disk_is_one_sentence_naming_the_file_and_the_way_out(fake_zoo, tmp_path, monkeypatch):
    import errno
    import shutil

    from configs import pca as pca_configs
    from wsjax.common import io

    workdir = str(tmp_path / "work")
    shutil.copytree(fake_zoo, workdir)

    def full(path, **arrays):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(io, "savez", full)  # the PCA's first block file
    with pytest.raises(ConfigError) as e:
        main.run_stage(pca_configs.get_config("tiny"), workdir)
    message = str(e.value)
    assert "\n" not in message and f"cannot write {workdir}/pca/blocks/block_0000.npz" in message
    assert "the disk is full" in message and "rerun the 'pca' stage" in message
