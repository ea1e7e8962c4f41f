"""Shared fixtures. `fake_zoo` writes a zoo directory in seconds, without training: every model
is one shared init plus a random combination of a few directions, so its weights lie in a
low-rank span (what PCA and the AE must find) and it still runs as a ResNet-18."""
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import zoo as zoo_configs
from launch.main import run_stage
from wsjax import data, models
from wsjax.common import contract
from wsjax.zoo import snapshots


def write_fake_zoo(workdir, num_models=12, rank=3, seed=0):
    config = zoo_configs.get_config("tiny")
    config.num_models = num_models
    config.seed = seed
    contract.record("zoo", config, workdir)
    dataset = data.load(config.data)
    tasks = data.task_set(config.tasks, dataset.num_classes).sample(num_models, seed)
    module = models.build(config.model, config.tasks.k)
    init = module.init(jax.random.key(seed), jnp.zeros((1,) + dataset.image_shape))
    rng = np.random.default_rng(seed)
    directions = [jax.tree_util.tree_map(lambda x: rng.normal(size=x.shape).astype(np.float32) * 0.1,
                                         init) for _ in range(rank)]
    splits = ["train"] * (num_models - 2) + ["val", "test"]
    rows = []
    for m in range(num_models):
        coef = rng.normal(size=rank).astype(np.float32)
        trees = []
        for tag, epoch, scale in (("early", 1, 0.5), ("final", 2, 1.0)):
            variables = jax.tree_util.tree_map(
                lambda x, *ds: np.asarray(x) + scale * sum(c * d for c, d in zip(coef, ds)),
                init, *directions)
            variables["batch_stats"] = jax.tree_util.tree_map_with_path(  # variances stay > 0
                lambda path, x: np.abs(x) + 0.1 if path[-1].key == "var" else x,
                variables["batch_stats"])
            trees.append(variables)
            rows.append(dict(
                model_id=m, snapshot=tag, step=10 * epoch, epoch=epoch, max_epoch=2,
                classes=data.tasks.format_classes(tasks[m]), split=splits[m], status="ok",
                optimizer="adam", learning_rate=1e-3, weight_decay=0.0, momentum=0.0,
                batch_size=64, init="shared", init_seed=0, init_method="lecun_normal",
                activation="relu", train_fraction=1.0, dropout_rate=0.0, label_noise=0.0, seed=m,
                train_loss=1.0 / scale, val_loss=1.1 / scale, val_accuracy=0.5 * scale))
        snapshots.save_snapshots(workdir, m, trees)
    snapshots.write_manifest(workdir, rows)
    return config


def fake_zoo_copy(fake_zoo, tmp_path_factory, name, *configs):
    """A fresh copy of the fake zoo (which stays untouched) with the stages of `configs` run on it."""
    workdir = str(tmp_path_factory.mktemp(name) / "work")
    shutil.copytree(fake_zoo, workdir)
    for config in configs:
        run_stage(config, workdir)
    return workdir


@pytest.fixture(scope="session")
def fake_zoo(tmp_path_factory):
    """A workdir holding a fake 12-model zoo (10 train, 1 val, 1 test), 2 snapshots each."""
    workdir = str(tmp_path_factory.mktemp("fake_zoo"))
    write_fake_zoo(workdir)
    return workdir


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """(workdir, manifest rows) of the real tiny zoo, trained once in this process (one device)."""
    workdir = str(tmp_path_factory.mktemp("zoo"))
    rows = run_stage(zoo_configs.get_config("tiny"), workdir)
    return workdir, rows
