"""The stage registry: `config.stage` -> module exposing `run(config, workdir)`, and `run_stage`,
which keeps the stage contract (wsjax.common.contract) around every stage's run."""
import importlib

from wsjax.common import config as config_lib
from wsjax.common import contract

# Imported lazily: a stage pays only for its own dependencies.
STAGES = {
    "zoo": "wsjax.zoo.train",
    "pca": "wsjax.pca.stage",
    "ae": "wsjax.ae.train",
    "align": "wsjax.align.train",
    "generator": "wsjax.generator.stage",
    "sample": "wsjax.sample.stage",
    "evaluate": "wsjax.evaluate.stage",
    "demo": "wsjax.demo",
    "bench_zoo": "wsjax.zoo.bench",
    "bench_pca": "wsjax.pca.bench",
}
# A stage's config check is its run module's `check_config(config)`, or the function named here.
VALIDATORS = {"zoo": ("wsjax.zoo.hparams", "validate")}


def validate(config):
    """Checks `config.stage` and the stage's fields (one ConfigError) before any file is
    written; returns the stage's module."""
    stage = config.get("stage")
    if stage not in STAGES:
        raise config_lib.ConfigError(f"config.stage must be one of {sorted(STAGES)}, got {stage!r}")
    module = importlib.import_module(STAGES[stage])
    where, name = VALIDATORS.get(stage, (STAGES[stage], "check_config"))
    check = getattr(importlib.import_module(where), name, None)
    if check is not None:
        check(config)
    return module


def run_stage(config, workdir, overwrite=None):
    """validate -> lock workdir/<stage>/ -> fingerprint check -> config.json -> the stage's run.

    `overwrite` (default `config.overwrite`) moves a stage built with other settings aside."""
    module = validate(config)
    if overwrite is None:
        overwrite = bool(config.get("overwrite", False))
    with contract.claim(config.stage, config, workdir, overwrite):
        return module.run(config, workdir)
