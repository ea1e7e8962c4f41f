"""Entry point: `python -m launch.main --config=configs/<stage>.py[:preset] --workdir=DIR`.

Flags -> config -> STAGES[config.stage].run(config, workdir). Any config field can be
overridden with `--config.field=value`; `--config.overwrite=True` moves a stage built with other
settings aside (wsjax.common.contract). Every mistake in the flags stops with one sentence.

Several processes (hosts): the same command on each, plus `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` where JAX cannot detect them (on a TPU pod it can: leave them out);
see wsjax.common.distributed.
"""
import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from wsjax.common import config as config_lib
from wsjax.common import distributed
from wsjax.stages import STAGES, run_stage  # noqa: F401  (re-exported for tests)

DEFAULT_WORKDIR = "workdir"

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file, e.g. configs/ae.py:tiny.")
_WORKDIR = flags.DEFINE_string(
    "workdir", DEFAULT_WORKDIR, "Where every stage reads its inputs and writes its outputs.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0, for jax.distributed.initialize (unset: "
    "JAX detects a TPU pod, Slurm or MPI; none: one process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run (see above).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")


class ConfigFileParser(flags.ArgumentParser):
    """`path[:preset]` -> the locked `get_config(preset)` of that file, plus the contract's
    `overwrite` field; a missing file or unknown preset is one sentence, not a traceback."""

    def parse(self, argument):
        path, _, preset = argument.partition(":")
        if not os.path.isfile(path):
            raise ValueError(f"config file {path} not found (expected e.g. configs/zoo.py:tiny)")
        spec = importlib.util.spec_from_file_location("stage_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        try:
            config = module.get_config(*([preset] if preset else []))
        except ValueError as e:  # presets name the ones they know
            raise ValueError(str(e)) from None
        if "overwrite" not in config:
            config.overwrite = False
        config.lock()
        return config

    def flag_type(self):
        return "config object"


flags.FLAGS["config"].parser = ConfigFileParser()


def _unknown_field(argv, error):
    """The `--config.a.b` override that names no field, from config_flags' wrapped KeyError."""
    key = error.args[0] if error.args and isinstance(error.args[0], KeyError) else error
    leaf = str(key.args[0] if key.args else key).strip("'")
    flag = next((a.split("=")[0] for a in argv if a.startswith("--config.")
                 and a.split("=")[0].endswith("." + leaf)), f"--config.{leaf}")
    source = next((a.partition("=")[2] for a in argv if a.startswith("--config=")), "the config")
    return f"error: {flag} names no field of {source}: check its spelling against that file"


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        # config_flags reports bad overrides in several exception types: one sentence for all.
        if isinstance(e, KeyError) or (e.args and isinstance(e.args[0], KeyError)):
            sys.exit(_unknown_field(argv, e))
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.exit(f"error: {msg}")


def main(argv):
    del argv
    if _CONFIG.value is None:
        sys.exit("error: --config is required, e.g. --config=configs/zoo.py:tiny")
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO: quiet by default
        logging.set_verbosity(logging.WARNING)
    try:
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        run_stage(_CONFIG.value, _WORKDIR.value)
    except config_lib.ConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
