"""The stage contract (issue 12, cases 1, 2 and 4): a workdir never holds results that do not
belong together. Fake zoos stand in for trained ones: the contract runs before any stage work."""
import json
import os
import shutil
import subprocess
import sys

import ml_collections
import pytest
from conftest import fake_zoo_copy, write_fake_zoo

from configs import ae as ae_configs
from configs import pca as pca_configs
from configs import zoo as zoo_configs
from wsjax.common import contract
from wsjax.common.config import ConfigError
from wsjax.stages import run_stage


@pytest.fixture(scope="module")
def built(fake_zoo, tmp_path_factory):
    """A fake 12-model zoo (seed 0) with its tiny PCA fitted."""
    return fake_zoo_copy(fake_zoo, tmp_path_factory, "contract", pca_configs.get_config("tiny"))


def _copy(src, tmp_path):
    dst = str(tmp_path / "work")
    shutil.copytree(src, dst)
    return dst


def _zoo_config(**fields):
    config = zoo_configs.get_config("tiny")
    config.num_models = 12  # the fake zoo's
    config.update(fields)
    return config


def _read(workdir, stage, name="config.json"):
    with open(os.path.join(workdir, stage, name), "rb") as f:
        return f.read()


@pytest.mark.parametrize("fields,named", [
    (dict(seed=1), "config.seed 0 -> 1"),
    (dict(seed=1, num_models=14), "config.num_models 12 -> 14"),
    (dict(num_models=5), "config.num_models 12 -> 5"),
])
def test_zoo_rerun_with_other_settings_is_refused_and_config_json_unchanged(
        fake_zoo, tmp_path, fields, named):
    workdir = _copy(fake_zoo, tmp_path)
    before = _read(workdir, "zoo"), _read(workdir, "zoo", contract.FINGERPRINT)
    with pytest.raises(ConfigError, match=named) as e:
        run_stage(_zoo_config(**fields), workdir)
    assert "new --workdir" in str(e.value) and "--config.overwrite=True" in str(e.value)
    assert (_read(workdir, "zoo"), _read(workdir, "zoo", contract.FINGERPRINT)) == before


def test_zoo_rerun_with_other_classes_per_task_is_refused(fake_zoo, tmp_path):
    workdir = _copy(fake_zoo, tmp_path)
    config = _zoo_config()
    config.tasks.k = 4
    with pytest.raises(ConfigError, match="config.tasks.k 3 -> 4"):
        run_stage(config, workdir)


def test_rejected_config_does_not_touch_config_json(fake_zoo, tmp_path):
    workdir = _copy(fake_zoo, tmp_path)
    before = _read(workdir, "zoo")
    with pytest.raises(ConfigError, match="config.num_models must be >= 1, got 0"):
        run_stage(_zoo_config(num_models=0), workdir)
    assert _read(workdir, "zoo") == before
    empty = str(tmp_path / "empty")
    with pytest.raises(ConfigError, match="config.num_models"):
        run_stage(_zoo_config(num_models=0), empty)
    assert not os.path.exists(empty)


def test_pca_rerun_with_other_settings_is_refused_and_same_settings_touch_nothing(built, tmp_path):
    workdir = _copy(built, tmp_path)
    config = pca_configs.get_config("tiny")
    before = _read(workdir, "pca")
    config.pca.max_components = 2
    with pytest.raises(ConfigError, match="config.pca.max_components 8 -> 2"):
        run_stage(config, workdir)
    assert _read(workdir, "pca") == before
    config.pca.max_components = 8
    config.compile_cache = "/elsewhere"  # runtime fields are not part of the fingerprint
    run_stage(config, workdir)
    assert _read(workdir, "pca") == before


def test_pca_refuses_after_the_zoo_changed(built, tmp_path):
    workdir = _copy(built, tmp_path)
    shutil.rmtree(os.path.join(workdir, "zoo"))
    write_fake_zoo(workdir, seed=1)
    with pytest.raises(ConfigError, match=r"pca/ in .* was built from a different zoo/"):
        run_stage(pca_configs.get_config("tiny"), workdir)


def test_ae_refuses_the_pca_of_another_zoo(built, tmp_path):
    workdir = str(tmp_path / "other")
    write_fake_zoo(workdir, seed=1)
    shutil.copytree(os.path.join(built, "pca"), os.path.join(workdir, "pca"))
    with pytest.raises(ConfigError, match=r"pca/ in .* was built from a different zoo/ than"):
        run_stage(ae_configs.get_config("tiny"), workdir)
    assert not os.path.exists(os.path.join(workdir, "ae", "config.json"))


def test_a_second_process_is_refused_with_one_sentence_naming_the_holder(fake_zoo, tmp_path):
    workdir = _copy(fake_zoo, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom wsjax.common import contract\n"
         "with contract.locked(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)",
         os.path.join(workdir, "zoo")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"is in use by pid {holder.pid} on host \S+ ") as e:
            run_stage(_zoo_config(), workdir)
        assert "\n" not in str(e.value)
    finally:
        holder.kill()
        holder.wait()


def test_overwrite_moves_the_old_stage_aside_and_starts_fresh(built, tmp_path):
    workdir = _copy(built, tmp_path)
    config = pca_configs.get_config("tiny")
    config.pca.max_components = 2
    run_stage(config, workdir, overwrite=True)
    aside = [d for d in os.listdir(workdir) if d.startswith("pca.old-")]
    assert len(aside) == 1
    assert contract.read(workdir, "pca")["settings"]["pca.max_components"] == 2
    with open(os.path.join(workdir, aside[0], contract.FINGERPRINT)) as f:
        assert json.load(f)["settings"]["pca.max_components"] == 8
    assert os.path.exists(os.path.join(workdir, "pca", "coeffs.npz"))


def test_sample_requests_with_other_settings_share_the_sample_directory(tmp_path):
    workdir = str(tmp_path)
    for stage in ("zoo", "pca", "ae", "align", "generator"):
        contract.record(stage, ml_collections.ConfigDict({"stage": stage, "seed": 0}), workdir)
    a, b = (ml_collections.ConfigDict({"stage": "sample", "classes": c}) for c in ("1-2", "3-4"))
    assert contract.fingerprint("sample", a, workdir) == contract.fingerprint("sample", b, workdir)
