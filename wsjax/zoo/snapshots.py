"""The zoo on disk.

    zoo/config.json                 resolved zoo config (data, model, tasks, init)
    zoo/models.csv                  one row per snapshot (MANIFEST_FIELDS), sorted by (model, step)
    zoo/init/                       the shared initialisation (schemes 'shared', 'pretrained')
    zoo/snapshots/<model_id>/       one Orbax checkpoint per model holding all its snapshots
                                    stacked in step order: {'params': [S, ...], 'batch_stats': [S, ...]}
    zoo/log.jsonl                   per cohort-epoch: images/s, seconds of training, evaluation, saving

One checkpoint per model, not per snapshot: an Orbax save costs ~0.12 s whatever it holds (2 CPU
cores), so nine stacked snapshots save 9x faster. Snapshot `i` of a model is the row of rank `i` by
`step` among that model's rows; tags are 'early' | 'final' (thesis schedule) or 'step<NNNNN>' |
'final' (step schedule). Any checkpoint reads without wsjax:
`orbax.checkpoint.StandardCheckpointer().restore(path)`.
"""
import csv
import functools
import os

import jax
import numpy as np

from wsjax.common import config as config_lib
from wsjax.common import checkpoints
from wsjax.common.config import require
from wsjax.data.tasks import parse_class_sets

MANIFEST_FIELDS = (
    "model_id", "snapshot", "step", "epoch", "max_epoch", "classes", "split", "status", "optimizer",
    "learning_rate", "weight_decay", "momentum", "batch_size", "init", "init_seed", "init_method",
    "activation", "train_fraction", "dropout_rate", "label_noise", "seed", "train_loss", "val_loss",
    "val_accuracy",
)
_INT = ("model_id", "step", "epoch", "max_epoch", "batch_size", "init_seed", "seed")
_FLOAT = ("learning_rate", "weight_decay", "momentum", "train_fraction", "dropout_rate", "label_noise",
          "train_loss", "val_loss", "val_accuracy")
# Columns added after zoos were first written: a manifest without them reads as what its models had.
_ADDED = dict(init_method="lecun_normal", activation="relu", train_fraction="1.0", dropout_rate="0.0",
              label_noise="0.0")


def zoo_dir(workdir, root="zoo"):
    return os.path.join(workdir, root)


def snapshot_path(workdir, model_id, root="zoo"):
    """The checkpoint directory holding every snapshot of one model."""
    return os.path.join(zoo_dir(workdir, root), "snapshots", f"{int(model_id):05d}")


def _sort_key(row):
    return int(row["model_id"]), int(row["step"])


def write_manifest(workdir, rows, root="zoo"):
    """Writes models.csv atomically, rows sorted by (model_id, step)."""
    path = os.path.join(zoo_dir(workdir, root), "models.csv")
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        w.writeheader()
        for row in sorted(rows, key=_sort_key):
            w.writerow({k: row[k] for k in MANIFEST_FIELDS})
    os.replace(tmp, path)


def read_manifest(workdir, root="zoo"):
    """Rows of models.csv with typed values; `classes` becomes a tuple of ints."""
    path = os.path.join(zoo_dir(workdir, root), "models.csv")
    require(os.path.exists(path), f"{path} not found: run the {root} stage with this --workdir first")
    rows = []
    with open(path, newline="") as f:
        for row in check_manifest([{**_ADDED, **r} for r in csv.DictReader(f)], path):
            for k in _INT:
                row[k] = int(row[k])
            for k in _FLOAT:
                row[k] = float(row[k])
            row["classes"] = parse_class_sets(row["classes"])[0]
            rows.append(row)
    return rows


def snapshot_index(rows):
    """{(model_id, tag): position of that snapshot in its model's stacked checkpoint}."""
    out, count = {}, {}
    for r in sorted(rows, key=_sort_key):
        out[(r["model_id"], r["snapshot"])] = count.get(r["model_id"], 0)
        count[r["model_id"]] = count.get(r["model_id"], 0) + 1
    return out


def save_snapshots(workdir, model_id, snapshots, root="zoo"):
    """Saves one model's snapshots, a list of {'params', 'batch_stats'} in step order, stacked."""
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *snapshots)
    checkpoints.save(snapshot_path(workdir, model_id, root), stacked)


def load_snapshots(workdir, model_id, root="zoo"):
    """Every snapshot of one model, stacked in step order ([S, ...] leaves, numpy)."""
    return checkpoints.restore(snapshot_path(workdir, model_id, root), stage=_stage(root))


def _stage(root):
    """The stage that writes a zoo layout at `root` ('zoo', or 'sample' for 'sample/<request>')."""
    return root.split("/")[0]


def check_snapshots(workdir, rows, root="zoo"):
    """One sentence naming the models of `rows` whose checkpoint is missing or truncated (and the
    stage that retrains them), before a reader starts long work over them."""
    ids = sorted({int(r["model_id"]) for r in rows})
    damaged = [m for m in ids if not checkpoints.exists(snapshot_path(workdir, m, root))]
    shown = ", ".join(map(str, damaged[:8])) + (f" and {len(damaged) - 8} more" if len(damaged) > 8 else "")
    require(not damaged, f"{zoo_dir(workdir, root)}/snapshots/ has no complete checkpoint for model "
            f"{shown}: rerun the '{_stage(root)}' stage with this --workdir (it retrains only those)")


@functools.lru_cache(maxsize=8)
def _index(workdir, root, mtime):
    del mtime  # part of the cache key: a rewritten manifest is read again
    return snapshot_index(read_manifest(workdir, root))


def load_variables(workdir, model_id, tag="final", root="zoo"):
    """{'params', 'batch_stats'} of one snapshot as numpy arrays."""
    path = os.path.join(zoo_dir(workdir, root), "models.csv")
    require(os.path.exists(path), f"{path} not found: run the {root} stage with this --workdir first")
    index = _index(os.path.abspath(workdir), root, os.path.getmtime(path))
    require((int(model_id), tag) in index, f"model {model_id} snapshot {tag!r} is not in {path}")
    stacked = load_snapshots(workdir, model_id, root)
    return jax.tree_util.tree_map(lambda x: x[index[(int(model_id), tag)]], stacked)


def load_model(workdir, model_id, tag="final", root="zoo"):
    """(module, variables, manifest row) of one snapshot: `module.apply(variables, x)`, the module
    with the model's own activation.

    `root` is the stage directory holding a zoo layout: 'zoo', or 'sample/<request>' for sampled models.
    """
    from wsjax import models
    config = config_lib.load(workdir, "zoo")
    rows = [r for r in read_manifest(workdir, root)
            if r["model_id"] == int(model_id) and r["snapshot"] == tag]
    require(rows, f"model {model_id} snapshot {tag!r} is not in {zoo_dir(workdir, root)}/models.csv")
    module = models.build(config.model, config.tasks.k, rows[0]["activation"])
    return module, load_variables(workdir, model_id, tag, root), rows[0]


_CHECKS = ([(k, int, "an integer") for k in _INT] + [(k, float, "a number") for k in _FLOAT]
           + [("classes", parse_class_sets, "class ids like 0-1-2")])


def check_manifest(rows, path):
    """`rows` (csv.DictReader's, header = line 1) unchanged, or one ConfigError naming the file
    and line of a missing column, a value of the wrong type or a repeated (model_id, snapshot)."""
    missing = [k for k in MANIFEST_FIELDS if rows and k not in rows[0]]
    require(not missing, f"{path} has no column {', '.join(missing)}: expected the header "
            f"{','.join(MANIFEST_FIELDS)}")
    seen = {}
    for line, row in enumerate(rows, start=2):
        require(None not in row and None not in row.values(),
                f"{path} line {line} does not have the {len(MANIFEST_FIELDS)} fields of the header: "
                "repair or remove that line")
        for k, parse, expected in _CHECKS:
            try:
                parse(row[k])
            except ValueError:
                raise config_lib.ConfigError(f"{path} line {line}: {k} must be {expected}, got "
                                             f"{row[k]!r}; repair or remove that line") from None
        key = (int(row["model_id"]), row["snapshot"])
        require(key not in seen, f"{path} line {line} repeats model_id {key[0]} snapshot "
                f"{key[1]!r} of line {seen.get(key)}: remove one of them")
        seen[key] = line
    return rows
