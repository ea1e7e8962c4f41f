"""The whole pipeline, zoo to report, each stage with its own sub-config of `configs/demo.py`.

With one seed (the default) the stages write under `workdir/`; with several (`--config.seeds=
'(0,1,2)'`) each seed's whole pipeline (zoo draws, held-out class sets, init, every stage's key)
runs under `workdir/seed_<s>/` and `workdir/metrics.json` + `workdir/report.md` give every
evaluate metric as mean ± std over seeds. Under several processes every process runs the demo
(each stage then runs where wsjax.stages says) and process 0 writes the aggregate.
"""
import os
import time

import numpy as np
from absl import logging

from wsjax.common import distributed, io
from wsjax.evaluate import stage as evaluate_stage
from wsjax.stages import run_stage, validate


def check_config(config):
    """Every stage's config, before the first one starts."""
    for stage in config.stages:
        validate(config[stage])

# Headline metrics of the report, as (evaluate/metrics.json path, label).
HEADLINES = (
    ("held_out.r2_loss", "held-out class sets: R² requested vs achieved loss (keep-the-best)"),
    ("held_out.r2_loss_no_selection", "held-out: R², generator alone (no selection)"),
    ("held_out.copy_r2_loss", "held-out: R², copy baseline"),
    ("held_out.spearman_loss", "held-out: Spearman ρ (keep-the-best)"),
    ("held_out.accuracy", "held-out: accuracy at the zoo's median final loss"),
    ("held_out.copy_accuracy", "held-out: copy accuracy"),
    ("held_out.copy_noise_accuracy", "held-out: copy + noise accuracy"),
    ("held_out.mean_model_accuracy", "held-out: mean model accuracy"),
    ("held_out.shared_init_accuracy", "held-out: shared init accuracy"),
    ("held_out.novelty_agreement", "held-out: agreement with nearest train snapshot"),
    ("held_out.finetune.sample.1", "held-out: accuracy after 1 epoch of fine-tuning from the sample"),
    ("held_out.finetune.shared_init.1", "held-out: accuracy after 1 epoch from the shared init"),
    ("held_out.finetune.copy.1", "held-out: accuracy after 1 epoch from the copy"),
    ("held_out.finetune.random_init.1", "held-out: accuracy after 1 epoch from a fresh random init"),
    ("train.r2_loss", "class sets of held-out models: R² (keep-the-best)"),
    ("train.r2_loss_no_selection", "class sets of held-out models: R², generator alone"),
    ("train.copy_r2_loss", "class sets of held-out models: R², copy"),
    ("train.accuracy", "class sets of held-out models: accuracy at median loss"),
    ("train.copy_accuracy", "class sets of held-out models: copy accuracy"),
    ("same_class_set_agreement", "agreement of two zoo models of one class set"),
)


def seeded(config, seed):
    """`config` with every stage's randomness drawn from `seed`."""
    c = config.copy_and_resolve_references()
    for stage in c.stages:
        c[stage].seed = seed
    c.zoo.init_seed = seed
    c.zoo.tasks.held_out_seed = seed
    return c


def run_pipeline(config, workdir):
    timings = {}
    for stage in config.stages:
        start = time.perf_counter()
        logging.info("demo: stage %s", stage)
        run_stage(config[stage], workdir, overwrite=bool(config.get("overwrite", False)))
        timings[stage] = round(time.perf_counter() - start, 1)
    print("demo stage times (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    return timings


def flatten(tree, prefix=""):
    """{'a.b.c': number} of every numeric leaf of nested dicts and of lists of numbers
    ('a.curve.0'); lists of records (per-model rows, which differ between seeds) are skipped."""
    out = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for k, v in items:
        if isinstance(v, list) and not all(isinstance(x, (int, float)) for x in v):
            continue
        if isinstance(v, (dict, list)):
            out.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def aggregate(workdirs, seeds, out_dir):
    """metrics.json {key: {mean, std, values}} and report.md over the seeds' evaluate metrics."""
    flat = [flatten(evaluate_stage.load(w)) for w in workdirs]
    keys = [k for k in flat[0] if all(k in f for f in flat)]
    summary = {k: dict(mean=float(np.mean([f[k] for f in flat])), std=float(np.std([f[k] for f in flat])),
                       values=[f[k] for f in flat]) for k in keys}
    summary["seeds"] = list(seeds)
    io.write_json(os.path.join(out_dir, "metrics.json"), summary)
    lines = [f"# wsjax demo over seeds {list(seeds)} (mean ± std)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {label} | {summary[k]['mean']:.3f} ± {summary[k]['std']:.3f} |"
              for k, label in HEADLINES if k in summary]
    lines += ["", "Per-seed reports: " + ", ".join(f"seed_{s}/evaluate/report.md" for s in seeds), ""]
    io.write_text(os.path.join(out_dir, "report.md"), "\n".join(lines))
    print("\n".join(lines))
    return summary


def run(config, workdir):
    seeds = tuple(int(s) for s in config.get("seeds", (0,)))
    if len(seeds) == 1:
        return run_pipeline(seeded(config, seeds[0]), workdir)
    workdirs = [os.path.join(workdir, f"seed_{s}") for s in seeds]
    for s, w in zip(seeds, workdirs):
        run_pipeline(seeded(config, s), w)
    return aggregate(workdirs, seeds, workdir) if distributed.is_primary() else None
