"""Sample stage: N weight sets for one (class set, target result), saved in the zoo's layout
under workdir/sample/<request>/ and loadable with `wsjax.zoo.load_model(..., root=...)`."""
import os

import jax
import numpy as np
from absl import logging

from wsjax import data, generator
from wsjax.common import config as config_lib
from wsjax.common import io
from wsjax.common.config import require
from wsjax.generator import select
from wsjax.models import bn, inference
from wsjax.zoo import step as step_lib
from wsjax.zoo import snapshots

SAMPLERS = ("best", "thesis") + generator.SAMPLERS


def parse_classes(text, class_names, task_set):
    """'1-4-7' or 'cat,dog,ship' -> sorted class ids; '' -> the first held-out set."""
    if not text:
        require(task_set.held_out, "config.classes is empty and the zoo holds out no class set")
        return task_set.held_out[0]
    if "," in text or not text.replace("-", "").isdigit():
        names = [s.strip() for s in text.split(",")]
        unknown = [n for n in names if n not in class_names]
        require(not unknown,
                f"config.classes names {unknown} not in the dataset's classes {list(class_names)}")
        ids = [class_names.index(n) for n in names]
    else:
        ids = [int(s) for s in text.split("-")]
    require(len(ids) == task_set.k and len(set(ids)) == task_set.k
            and all(0 <= i < len(class_names) for i in ids),
            f"config.classes must name {task_set.k} distinct classes of {len(class_names)}, got {text!r}")
    return tuple(sorted(ids))


def default_targets(workdir):
    """Median val loss and accuracy of the zoo's final train snapshots."""
    rows = [r for r in snapshots.read_manifest(workdir)
            if r["snapshot"] == "final" and r["split"] == "train" and r["status"] == "ok"]
    return (float(np.median([r["val_loss"] for r in rows])),
            float(np.median([r["val_accuracy"] for r in rows])))


def zoo_loss_range(workdir):
    """(min, max) val loss of the zoo's train snapshots: the range requests are learnt on."""
    losses = [r["val_loss"] for r in snapshots.read_manifest(workdir)
              if r["split"] == "train" and r["status"] == "ok"]
    return min(losses), max(losses)


def request_root(classes, loss, accuracy, sampler):
    return os.path.join("sample", f"{data.tasks.format_classes(classes)}_loss{loss:.3f}"
                                  f"_acc{accuracy:.3f}_{sampler}")


def draw(config, workdir, classes, loss, acc, dataset):
    """Stacked variables [num_samples, ...] for the request, BN statistics recalibrated."""
    n, key, recal = int(config.num_samples), jax.random.key(config.seed), config.recalibrate
    x, y = select.prompt_images(dataset, classes, config.seed)
    if config.sampler == "thesis":
        from wsjax.sample.generate import Generator
        gen = Generator(workdir)
        stacked, module = gen.weights(gen.latents([classes] * n, [loss] * n, [acc] * n, key=key,
                                                  noise=config.latent_noise)), gen.module
    else:
        gen = generator.load(workdir)
        module = gen.module
        if config.sampler == "best":
            pool = gen.variables(gen.candidates(classes, [loss], key, **config.pool))
            expected = select.calibrate(select.losses(
                module, pool, (x, y), num_batches=recal.num_batches, batch_size=recal.batch_size),
                gen.meta["calibration"])
            keep = np.argsort(np.abs(np.log(expected) - np.log(loss)))[:n]
            stacked = jax.tree_util.tree_map(lambda a: a[keep], pool)
        else:
            z = np.concatenate([gen.latents(config.sampler, classes, [loss], jax.random.fold_in(key, i))
                                for i in range(n)])
            stacked = gen.variables(z)
    if recal.enabled:
        stacked = bn.recalibrate_stack(module, stacked, x, num_batches=recal.num_batches,
                                       batch_size=recal.batch_size)
    return module, [step_lib.unstack(stacked, i) for i in range(n)]


def run(config, workdir):
    require(config.num_samples >= 1, f"config.num_samples must be >= 1, got {config.num_samples}")
    require(config.sampler in SAMPLERS, f"config.sampler must be one of {SAMPLERS}, got {config.sampler!r}")
    zoo_config = config_lib.load(workdir, "zoo")
    dataset = data.load(zoo_config.data)
    task_set = data.task_set(zoo_config.tasks, dataset.num_classes)
    classes = parse_classes(config.classes, dataset.class_names, task_set)
    median_loss, median_acc = default_targets(workdir)
    loss = config.target_loss if config.target_loss >= 0 else median_loss
    acc = config.target_accuracy if config.target_accuracy >= 0 else median_acc
    require(loss > 0, f"config.target_loss must be > 0 (or < 0 for the zoo median), got {loss}")
    lo, hi = zoo_loss_range(workdir)
    if not lo <= loss <= hi:
        print(f"sample: warning: config.target_loss={loss:g} lies outside the zoo's val losses "
              f"[{lo:.3g}, {hi:.3g}]: the networks will be as near as the generators reach")
    root = request_root(classes, loss, acc, config.sampler)
    if os.path.exists(os.path.join(workdir, root, "models.csv")):
        logging.info("sample: %s already complete", root)
        return root
    module, nets = draw(config, workdir, classes, loss, acc, dataset)
    x_val, y_val = data.task_split(dataset, classes, "val")
    rows = []
    for i, variables in enumerate(nets):
        val_loss, val_acc = inference.loss_accuracy(module, variables, x_val, y_val)
        snapshots.save_snapshots(workdir, i, [variables], root=root)
        rows.append(dict(
            model_id=i, snapshot="final", step=0, epoch=0, max_epoch=0,
            classes=data.tasks.format_classes(classes), split="sampled", status="ok",
            optimizer="", learning_rate=0.0, weight_decay=0.0, momentum=0.0, batch_size=0,
            init="sampled", init_seed=0, init_method="", activation=module.activation,
            train_fraction=float("nan"), dropout_rate=float("nan"), label_noise=float("nan"),
            seed=config.seed + i,
            train_loss=float("nan"), val_loss=val_loss, val_accuracy=val_acc))
    io.write_json(os.path.join(workdir, root, "request.json"), dict(
        classes=list(classes), target_loss=loss, target_accuracy=acc, sampler=config.sampler,
        recalibrated=config.recalibrate.enabled))
    snapshots.write_manifest(workdir, rows, root=root)  # last: its presence marks the request done
    print(f"sample: {len(nets)} models ({config.sampler}) for classes {classes} (target loss "
          f"{loss:.3f}) -> {os.path.join(workdir, root)}; achieved val loss "
          + ", ".join(f"{r['val_loss']:.3f}" for r in rows) + "; acc "
          + ", ".join(f"{r['val_accuracy']:.3f}" for r in rows))
    return root
