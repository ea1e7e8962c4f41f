"""Sample stage: N weight sets for one (class set, target result), saved in the zoo's layout
under workdir/sample/<request>/ and loadable with `wsjax.zoo.load_model(..., root=...)`."""
import json
import os

import jax
import numpy as np
from absl import logging

from wsjax import data
from wsjax.common.config import require
from wsjax.models import inference
from wsjax.sample.generate import Generator
from wsjax.zoo import store


def parse_classes(text, class_names, task_set):
    """'1-4-7' or 'cat,dog,ship' -> sorted class ids; '' -> the first held-out set."""
    if not text:
        require(task_set.held_out, "config.classes is empty and the zoo holds out no class set")
        return task_set.held_out[0]
    if "," in text or not text.replace("-", "").isdigit():
        names = [s.strip() for s in text.split(",")]
        unknown = [n for n in names if n not in class_names]
        require(not unknown, f"config.classes names {unknown} not in the dataset's classes {list(class_names)}")
        ids = [class_names.index(n) for n in names]
    else:
        ids = [int(s) for s in text.split("-")]
    require(len(ids) == task_set.k and len(set(ids)) == task_set.k
            and all(0 <= i < len(class_names) for i in ids),
            f"config.classes must name {task_set.k} distinct classes of {len(class_names)}, got {text!r}")
    return tuple(sorted(ids))


def default_targets(workdir):
    """Median val loss and accuracy of the zoo's final train snapshots."""
    rows = [r for r in store.read_manifest(workdir)
            if r["snapshot"] == "final" and r["split"] == "train" and r["status"] == "ok"]
    return (float(np.median([r["val_loss"] for r in rows])),
            float(np.median([r["val_accuracy"] for r in rows])))


def request_root(classes, loss, accuracy):
    return os.path.join("sample", f"{data.tasks.format_classes(classes)}_loss{loss:.3f}_acc{accuracy:.3f}")


def run(config, workdir):
    require(config.num_samples >= 1, f"config.num_samples must be >= 1, got {config.num_samples}")
    gen = Generator(workdir)
    task_set = data.task_set(gen.zoo_config.tasks, gen.dataset.num_classes)
    classes = parse_classes(config.classes, gen.dataset.class_names, task_set)
    median_loss, median_acc = default_targets(workdir)
    loss = config.target_loss if config.target_loss >= 0 else median_loss
    acc = config.target_accuracy if config.target_accuracy >= 0 else median_acc
    root = request_root(classes, loss, acc)
    if os.path.exists(os.path.join(workdir, root, "models.csv")):
        logging.info("sample: %s already complete", root)
        return root

    n = int(config.num_samples)
    z = gen.latents([classes] * n, [loss] * n, [acc] * n, key=jax.random.key(config.seed),
                    noise=config.latent_noise)
    stacked = gen.weights(z)
    x_val, y_val = data.task_split(gen.dataset, classes, "val")
    rows = []
    for i in range(n):
        variables = jax.tree_util.tree_map(lambda x: np.asarray(x[i]), stacked)
        if config.recalibrate.enabled:
            variables = gen.recalibrate(variables, classes, seed=config.seed + i,
                                        num_batches=config.recalibrate.num_batches,
                                        batch_size=config.recalibrate.batch_size)
        val_loss, val_acc = inference.loss_accuracy(gen.module, variables, x_val, y_val)
        store.save_variables(workdir, i, "final", variables, root=root)
        rows.append(dict(
            model_id=i, snapshot="final", epoch=0, max_epoch=0,
            classes=data.tasks.format_classes(classes), split="sampled", status="ok",
            optimizer="", learning_rate=0.0, weight_decay=0.0, momentum=0.0, batch_size=0,
            init="sampled", init_seed=0, seed=config.seed + i, train_loss=float("nan"),
            val_loss=val_loss, val_accuracy=val_acc))
    with open(os.path.join(workdir, root, "request.json"), "w") as f:
        json.dump(dict(classes=list(classes), target_loss=loss, target_accuracy=acc,
                       latent_noise=config.latent_noise, recalibrated=config.recalibrate.enabled), f)
    store.write_manifest(workdir, rows, root=root)  # last: its presence marks the request done
    print(f"sample: {n} models for classes {classes} (target loss {loss:.3f}, acc {acc:.3f}) -> "
          f"{os.path.join(workdir, root)}; achieved val acc "
          + ", ".join(f"{r['val_accuracy']:.3f}" for r in rows))
    return root
