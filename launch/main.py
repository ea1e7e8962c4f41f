"""Entry point: `python -m launch.main --config=configs/<stage>.py[:preset] --workdir=DIR`.

Flags -> config -> STAGES[config.stage].run(config, workdir). Any config field can be
overridden with `--config.field=value`.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from wsjax.common import config as config_lib
from wsjax.stages import STAGES, run_stage  # noqa: F401  (re-exported for tests)

DEFAULT_WORKDIR = "workdir"

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file, e.g. configs/ae.py:tiny.")
_WORKDIR = flags.DEFINE_string(
    "workdir", DEFAULT_WORKDIR, "Where every stage reads its inputs and writes its outputs.")


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
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO: quiet by default
        logging.set_verbosity(logging.WARNING)
    try:
        run_stage(_CONFIG.value, _WORKDIR.value)
    except config_lib.ConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
