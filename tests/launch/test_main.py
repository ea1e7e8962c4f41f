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


def test_invalid_config_field_is_refused_in_one_sentence(tmp_path):
    r = _launch("--config=configs/zoo.py:tiny", "--config.no_such_field=3", f"--workdir={tmp_path}")
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].startswith("error: invalid flags or config field")
    assert not os.listdir(tmp_path)


def test_bad_field_value_stops_before_work_with_field_name(tmp_path):
    r = _launch("--config=configs/zoo.py:tiny", "--config.model.stem=huge", f"--workdir={tmp_path}")
    assert r.returncode != 0
    assert "config.model.stem" in r.stderr.strip().splitlines()[-1]


def test_resolved_config_is_written_to_the_stage_dir(tmp_path):
    config = ml_collections.ConfigDict({"stage": "zoo", "seed": 3})
    from wsjax.common import config as config_lib
    path = config_lib.save(config, str(tmp_path), "zoo")
    assert json.load(open(path)) == {"seed": 3, "stage": "zoo"}
    assert config_lib.load(str(tmp_path), "zoo").seed == 3
    with pytest.raises(ConfigError, match="run the 'pca' stage"):
        config_lib.load(str(tmp_path), "pca")
