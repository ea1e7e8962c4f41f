"""A damaged zoo/models.csv (issue 12, case 5) stops with one sentence naming the file and line."""
import csv
import os

import pytest

from wsjax.common.config import ConfigError
from wsjax.zoo import snapshots

ROW = dict(model_id=0, snapshot="final", step=2, epoch=2, max_epoch=2, classes="0-1-2", split="train",
           status="ok", optimizer="adam", learning_rate=1e-3, weight_decay=0.0, momentum=0.0,
           batch_size=64, init="shared", init_seed=0, init_method="glorot_uniform", activation="tanh",
           train_fraction=0.5, dropout_rate=0.1, label_noise=0.2, seed=0, train_loss=1.0, val_loss=1.1,
           val_accuracy=0.5)


@pytest.fixture
def manifest(tmp_path):
    workdir = str(tmp_path)
    os.makedirs(snapshots.zoo_dir(workdir))
    snapshots.write_manifest(workdir, [dict(ROW, model_id=m, snapshot=s, step=e, epoch=e)
                                       for m in range(3) for s, e in (("early", 1), ("final", 2))])
    return workdir, os.path.join(snapshots.zoo_dir(workdir), "models.csv")


def _edit(path, edit):
    with open(path) as f:
        lines = f.read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(edit(lines)) + "\n")


def test_an_intact_manifest_reads_with_types(manifest):
    rows = snapshots.read_manifest(manifest[0])
    assert len(rows) == 6 and rows[0]["classes"] == (0, 1, 2) and rows[0]["val_loss"] == 1.1
    assert tuple(rows[0][k] for k in ("init_method", "activation", "train_fraction", "dropout_rate",
                                      "label_noise")) == ("glorot_uniform", "tanh", 0.5, 0.1, 0.2)


def test_a_manifest_from_before_the_variety_columns_reads_as_the_defaults_it_was_built_with(manifest):
    workdir, path = manifest
    added = ("init_method", "activation", "train_fraction", "dropout_rate", "label_noise")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, [k for k in snapshots.MANIFEST_FIELDS if k not in added])
        w.writeheader()
        w.writerows({k: v for k, v in r.items() if k not in added} for r in rows)
    row = snapshots.read_manifest(workdir)[0]
    assert tuple(row[k] for k in added) == ("lecun_normal", "relu", 1.0, 0.0, 0.0)


@pytest.mark.parametrize("edit,expected", [
    (lambda ls: ls[:3] + ["garbage"] + ls[3:],
     rf"line 4 does not have the {len(snapshots.MANIFEST_FIELDS)} fields"),
    (lambda ls: ls[:2] + [ls[2].replace("0.001", "fast")] + ls[3:],
     r"line 3: learning_rate must be a number, got 'fast'"),
    (lambda ls: ls[:5] + [ls[5].replace("0-1-2", "a-b-c")] + ls[6:],
     r"line 6: classes must be class ids like 0-1-2, got 'a-b-c'"),
    (lambda ls: ls + [ls[3]], r"line 8 repeats model_id 1 snapshot 'early' of line 4"),
    (lambda ls: [ls[0].replace(",val_loss", "")] + [line.replace(",1.1,", ",") for line in ls[1:]],
     r"has no column val_loss: expected the header"),
])
def test_a_damaged_manifest_is_one_sentence_naming_file_and_line(manifest, edit, expected):
    workdir, path = manifest
    _edit(path, edit)
    with pytest.raises(ConfigError, match=expected) as e:
        snapshots.read_manifest(workdir)
    assert str(e.value).startswith(path) and "\n" not in str(e.value)
