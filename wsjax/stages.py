"""The stage registry: `config.stage` -> module exposing `run(config, workdir)`."""
import importlib

from wsjax.common import config as config_lib

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


def run_stage(config, workdir):
    """Validates `config.stage`, saves the resolved config and dispatches to the stage."""
    stage = config.get("stage")
    if stage not in STAGES:
        raise config_lib.ConfigError(f"config.stage must be one of {sorted(STAGES)}, got {stage!r}")
    module = importlib.import_module(STAGES[stage])
    config_lib.save(config, workdir, stage)
    return module.run(config, workdir)
