"""The stage registry: `config.stage` -> module exposing `run(config, workdir)`, and `run_stage`,
which keeps the stage contract (wsjax.common.contract) around every stage's run.

Under several processes (wsjax.common.distributed) the zoo runs on every process, over all their
devices; the demo runs on every process too, as it only calls `run_stage` for each stage. Every
other stage is single-process: PCA, AE, SANE, align, generator, sample and evaluate fit one host (the
thesis-size zoo's PCA and AE read a few GB) and the benchmarks measure one host, so they run on
process 0 while the others wait. Process 0 alone takes the lock and writes the fingerprint.
"""
import contextlib
import errno
import importlib
import os

from wsjax.common import config as config_lib
from wsjax.common import contract
from wsjax.common import distributed

# Imported lazily: a stage pays only for its own dependencies.
STAGES = {
    "zoo": "wsjax.zoo.stage",
    "pca": "wsjax.pca.stage",
    "ae": "wsjax.ae.stage",
    "align": "wsjax.align.stage",
    "generator": "wsjax.generator.stage",
    "sample": "wsjax.sample.stage",
    "evaluate": "wsjax.evaluate.stage",
    "sane": "wsjax.sane.stage",
    "demo": "wsjax.demo",
    "bench_zoo": "wsjax.zoo.bench",
    "bench_pca": "wsjax.pca.bench",
    "bench_properties": "wsjax.properties.bench",
    "bench_sane": "wsjax.sane.bench",
}
# Write failures that are the workdir's, not the code's: one sentence instead of a traceback.
_WORKDIR_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                   errno.EROFS: "the file system is read-only", errno.EACCES: "permission is denied"}
# A stage's config check is its run module's `check_config(config)`, or the function named here.
VALIDATORS = {"zoo": ("wsjax.zoo.hparams", "validate")}
# Stages every process runs under several processes; the others run on process 0 alone.
MULTI_PROCESS_STAGES = frozenset(("zoo", "demo"))


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

    `overwrite` (default `config.overwrite`) moves a stage built with other settings aside.
    Under several processes: see the module docstring (None on the processes that only wait)."""
    module = validate(config)
    if overwrite is None:
        overwrite = bool(config.get("overwrite", False))
    try:
        return _run_claimed(config, workdir, module, overwrite)
    except OSError as e:
        if e.errno not in _WORKDIR_ERRORS:
            raise
        path = e.filename or os.path.join(workdir, config.stage)
        raise config_lib.ConfigError(
            f"cannot write {path}: {_WORKDIR_ERRORS[e.errno]}; expected a writable --workdir with free "
            f"space: make room (or choose another --workdir) and rerun the '{config.stage}' stage, "
            "which resumes where it stopped") from e


def _run_claimed(config, workdir, module, overwrite):
    """module.run inside the contract's claim, on the processes the stage runs on."""
    claim = lambda: contract.claim(config.stage, config, workdir, overwrite)  # noqa: E731
    if not distributed.is_multiprocess():
        with claim():
            return module.run(config, workdir)
    if config.stage not in MULTI_PROCESS_STAGES:
        def run_claimed():
            with claim():
                return module.run(config, workdir)
        return distributed.run_on_primary(f"{config.stage} stage", run_claimed)
    with contextlib.ExitStack() as stack:  # process 0 holds the lock until every process is done
        distributed.run_on_primary(f"{config.stage} claim", lambda: stack.enter_context(claim()))
        result = module.run(config, workdir)
        distributed.barrier(f"{config.stage} done")
        return result
