"""The whole pipeline at CI size (configs/demo.py:tiny), run once, then checked stage by stage."""
import json
import os
import shutil

import numpy as np
import pytest

from configs import demo
from wsjax import data, models
from wsjax.common import config as config_lib
from wsjax.models import inference
from wsjax.stages import run_stage
from wsjax.zoo import load_model, read_manifest


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("demo_tiny"))
    run_stage(demo.get_config("tiny"), workdir)
    return workdir


def test_held_out_class_sets_never_reach_a_zoo_model(pipeline):
    zoo_config = config_lib.load(pipeline, "zoo")
    held = set(data.task_set(zoo_config.tasks, 10).held_out)
    assert held
    assert not {r["classes"] for r in read_manifest(pipeline)} & held


def test_sampled_networks_load_with_the_zoo_loader_and_classify(pipeline):
    from wsjax.sample import stage as sample_stage
    zoo_config = config_lib.load(pipeline, "zoo")
    held = data.task_set(zoo_config.tasks, 10).held_out[0]
    root = sample_stage.request_root(held, *sample_stage.default_targets(pipeline), "best")
    assert os.path.isdir(os.path.join(pipeline, root))  # the demo's default request
    rows = read_manifest(pipeline, root=root)
    assert len(rows) == demo.get_config("tiny").sample.num_samples
    module, variables, row = load_model(pipeline, 0, "final", root=root)
    zoo_config = config_lib.load(pipeline, "zoo")
    dataset = data.load(zoo_config.data)
    x, y = data.task_split(dataset, row["classes"], "val")
    loss, acc = inference.loss_accuracy(module, variables, x, y)
    assert np.isfinite(loss) and abs(acc - row["val_accuracy"]) < 1e-6
    # the sampled request was a held-out class set (the sample config's default)
    assert row["classes"] in data.task_set(zoo_config.tasks, 10).held_out
    assert models.count_params(variables["params"]) == models.count_params(
        load_model(pipeline, 0, "final")[1]["params"])


def test_evaluate_writes_every_plot_and_metric(pipeline):
    out = os.path.join(pipeline, "evaluate")
    for name in ("metrics.json", "report.md", "records.json", "target_vs_achieved.png", "finetune.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    config = demo.get_config("tiny").evaluate
    for kind in ("train", "held_out"):
        m = metrics[kind]
        for key in ("r2_loss", "r2_loss_no_selection", "copy_r2_loss", "spearman_loss", "accuracy",
                    "copy_accuracy", "copy_noise_accuracy", "mean_model_accuracy",
                    "shared_init_accuracy", "novelty_agreement"):
            assert np.isfinite(m[key]), (kind, key)
        assert 0.0 <= m["accuracy"] <= 1.0
        # the thesis mode is evaluated beside the new generators
        assert set(m["samplers"]) == {"best", "copy", *config.samplers}
    assert len(metrics["held_out"]["finetune"]["sample"]) == len(config.finetune.epochs)
    records = json.load(open(os.path.join(out, "records.json")))["records"]
    best = [r for r in records if r["sampler"] == "best"]
    assert len(best) == len(metrics["targets"]) * (config.num_train_tasks + config.num_held_out_tasks)
    # keep-the-best chose on train images: each record says the train loss it was chosen by
    assert all(np.isfinite(r["train_loss"]) for r in best)
    assert "ae" in metrics and "align" in metrics and "generator" in metrics


def test_evaluate_fine_tunes_sane_samples_where_the_workdir_has_a_sane_stage(pipeline, tmp_path):
    from configs import sane as sane_configs
    workdir = str(tmp_path / "work")
    shutil.copytree(pipeline, workdir, ignore=shutil.ignore_patterns("evaluate"))
    sane_config = sane_configs.get_config("tiny")
    sane_config.train.update(steps=10, warmup_steps=2, checkpoint_every=5)  # decodes; need not be good
    run_stage(sane_config, workdir)
    config = demo.get_config("tiny").evaluate  # the pipeline test fine-tunes; here epoch 0 only
    config.num_train_tasks, config.num_held_out_tasks = 0, 1
    config.samplers, config.no_selection, config.finetune.epochs = ("path",), "path", (0,)
    run_stage(config, workdir)
    finetune = json.load(open(os.path.join(workdir, "evaluate", "metrics.json")))["held_out"]["finetune"]
    assert set(finetune) == {"sample", "copy", "shared_init", "random_init", "sane", "sane_prompts"}
    assert all(len(v) == len(config.finetune.epochs) and np.isfinite(v).all() for v in finetune.values())
    report = open(os.path.join(workdir, "evaluate", "report.md")).read()
    assert "| sane |" in report and "| sane_prompts |" in report
    # its outputs depend on sane/: a retrained sane stage makes a rerun refuse, not pass silently
    assert "sane" in json.load(open(os.path.join(workdir, "evaluate", "fingerprint.json")))["inputs"]


def test_a_different_request_changes_the_sample(pipeline):
    config = demo.get_config("tiny").sample
    roots = []
    for loss in (0.05, 1.5):
        c = config.copy_and_resolve_references()
        c.target_loss = loss
        roots.append(run_stage(c, pipeline))
    assert roots[0] != roots[1]
    low, high = (load_model(pipeline, 0, "final", root=r) for r in roots)
    assert not np.allclose(low[1]["params"]["fc"]["kernel"], high[1]["params"]["fc"]["kernel"])
    assert low[2]["val_loss"] < high[2]["val_loss"]


def test_a_request_outside_the_zoo_warns_with_the_range(pipeline, capsys):
    config = demo.get_config("tiny").sample
    config.target_loss = 1e9
    run_stage(config, pipeline)
    assert "outside the zoo's val losses" in capsys.readouterr().out


def _outputs(workdir):
    """Modification times of every stage output (each lock records its run's holder)."""
    return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
            for d, _, files in os.walk(workdir) for f in files if f != ".lock"}


def test_rerunning_the_demo_is_a_no_op(pipeline):
    before = _outputs(pipeline)
    run_stage(demo.get_config("tiny"), pipeline)
    assert _outputs(pipeline) == before


def test_seed_aggregation_gives_mean_and_std_of_every_metric(tmp_path):
    from wsjax import demo as demo_lib
    dirs = []
    for s, acc in ((0, 0.8), (1, 0.9)):
        d = tmp_path / f"seed_{s}" / "evaluate"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(
            {"held_out": {"accuracy": acc, "finetune": {"sample": [acc, 1.0]}}, "note": "text"}))
        dirs.append(str(tmp_path / f"seed_{s}"))
    summary = demo_lib.aggregate(dirs, (0, 1), str(tmp_path))
    assert summary["held_out.accuracy"]["mean"] == pytest.approx(0.85)
    assert summary["held_out.accuracy"]["std"] == pytest.approx(0.05)
    assert summary["held_out.finetune.sample.1"]["values"] == [1.0, 1.0]
    assert "note" not in summary and os.path.getsize(tmp_path / "report.md") > 0
