"""Entry point: `python -m launch.main --config=configs/<stage>.py[:preset] --workdir=DIR`.

Flags -> config -> STAGES[config.stage].run(config, workdir). Any config field can be
overridden with `--config.field=value`.
"""
import importlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from wsjax.common import config as config_lib

DEFAULT_WORKDIR = "workdir"

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file, e.g. configs/ae.py:tiny.")
_WORKDIR = flags.DEFINE_string(
    "workdir", DEFAULT_WORKDIR, "Where every stage reads its inputs and writes its outputs.")

# Stage name -> module exposing run(config, workdir). Imported lazily: a stage pays for its own deps.
STAGES = {
    "zoo": "wsjax.zoo.train",
    "pca": "wsjax.pca.stage",
    "ae": "wsjax.ae.train",
    "align": "wsjax.align.train",
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
        raise config_lib.ConfigError(
            f"config.stage must be one of {sorted(STAGES)}, got {stage!r}")
    module = importlib.import_module(STAGES[stage])
    config_lib.save(config, workdir, stage)
    return module.run(config, workdir)


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
        # config_flags reports bad overrides in several exception types: one sentence for all.
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.exit(f"error: invalid flags or config field: {msg}")


def main(argv):
    del argv
    if _CONFIG.value is None:
        sys.exit("error: --config is required, e.g. --config=configs/zoo.py:tiny")
    logging.set_verbosity(logging.INFO)
    try:
        run_stage(_CONFIG.value, _WORKDIR.value)
    except config_lib.ConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
