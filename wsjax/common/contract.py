"""The stage contract `run_stage` keeps: validate -> lock -> fingerprint check -> config.json.

A stage's fingerprint hashes the settings its outputs depend on plus the fingerprints of the
stages it reads, so a rerun with other settings, or over an upstream stage that changed since,
is refused instead of silently mixing results that do not belong together.

    <stage>/.lock               advisory lock held while the stage runs ("pid N on host H")
    <stage>/fingerprint.json    {'fingerprint', 'settings': {field: value}, 'inputs': {stage: fp}}
"""
import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import socket

from absl import logging

from wsjax.common import config as config_lib
from wsjax.common import io
from wsjax.common.config import ConfigError, require

# Fields that schedule, cache or report the same computation: they never change outputs.
RUNTIME_FIELDS = frozenset(("compile_cache", "overwrite", "preset", "verbosity", "progress",
                            "num_devices", "strategy", "cohort_size", "steps_per_call", "workers",
                            "checkpoint_every_secs", "device_share"))
# The stages each stage reads; their fingerprints are part of its own.
INPUTS = {"pca": ("zoo",), "ae": ("pca",), "align": ("ae",), "generator": ("pca",),
          "sample": ("generator",), "evaluate": ("generator",), "sane": ("zoo",),
          "bench_properties": ("zoo",)}


def inputs(stage, config, workdir):
    """INPUTS of `stage`, plus align/ where the config uses the thesis sampler, and sane/ where
    evaluate fine-tunes SANE's samples (enabled, and a finished sane stage in `workdir`: its
    metrics.json is written last)."""
    thesis = config.get("sampler") == "thesis" or "thesis" in config.get("samplers", ())
    sane = (stage == "evaluate" and config.get("sane", {}).get("enabled")
            and os.path.exists(os.path.join(workdir, "sane", "metrics.json")))
    return (INPUTS.get(stage, ()) + (("align",) if stage in ("sample", "evaluate") and thesis else ())
            + (("sane",) if sane else ()))
# Stages whose settings do not pin their directory (sample keeps one directory per request,
# named by its settings; a benchmark rewrites its results each run): only inputs are compared.
UNPINNED_STAGES = frozenset(("sample", "bench_zoo", "bench_pca", "bench_properties", "bench_sane"))
FINGERPRINT = "fingerprint.json"
_OWN_FILES = frozenset((".lock", FINGERPRINT, "config.json"))  # what the contract itself writes
_SHOWN = 6  # differing fields named in a refusal


def settings(config):
    """{dotted field: value} of every field but RUNTIME_FIELDS, JSON-normalised (tuples: lists)."""
    flat = {}

    def walk(tree, prefix):
        for key, value in tree.items():
            if key in RUNTIME_FIELDS:
                continue
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[prefix + key] = value

    walk(json.loads(config.to_json_best_effort()), "")
    return flat


def read(workdir, stage):
    """The fingerprint record `stage` wrote in `workdir`, or None if it never ran here."""
    path = os.path.join(workdir, stage, FINGERPRINT)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise ConfigError(f"{path} is corrupt ({e}): delete it and rerun the '{stage}' stage "
                          "with this --workdir") from e


def current(workdir, stage):
    """The record of `stage`, checked to have been built from the inputs in `workdir` now (all
    the way up the pipeline): a stage is never read over an upstream that changed since."""
    rec = read(workdir, stage)
    require(rec is not None, f"{os.path.join(workdir, stage, FINGERPRINT)} not found: run (or "
            f"rerun) the '{stage}' stage with this --workdir first")
    for upstream, fp in rec["inputs"].items():
        require(current(workdir, upstream)["fingerprint"] == fp,
                f"{stage}/ in {workdir} was built from a different {upstream}/ than the one there "
                f"now: rerun the '{stage}' stage with --config.overwrite=True first")
    return rec


def fingerprint(stage, config, workdir):
    """The record of this run: settings, the recorded fingerprints of its inputs, and their hash."""
    recorded = {upstream: current(workdir, upstream)["fingerprint"]
                for upstream in inputs(stage, config, workdir)}
    record = dict(settings={} if stage in UNPINNED_STAGES else settings(config), inputs=recorded)
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return dict(fingerprint=digest[:16], **record)


def record(stage, config, workdir, rec=None):
    """Writes <stage>/fingerprint.json (`rec`, or computed) and <stage>/config.json."""
    io.write_json(os.path.join(_make_dir(workdir, stage), FINGERPRINT),
                  rec or fingerprint(stage, config, workdir))
    config_lib.save(config, workdir, stage)


def _short(value):
    text = json.dumps(value)
    return text if len(text) <= 30 else text[:27] + "..."


def refusal(stage, workdir, old, new):
    """One sentence: which settings or inputs differ, and the two ways out."""
    keys = sorted(set(old["settings"]) | set(new["settings"]))
    missing = object()
    fields = [f"config.{k} {_short(old['settings'].get(k))} -> {_short(new['settings'].get(k))}"
              for k in keys if old["settings"].get(k, missing) != new["settings"].get(k, missing)]
    inputs = [s for s in sorted(set(old["inputs"]) | set(new["inputs"]))
              if old["inputs"].get(s) != new["inputs"].get(s)]
    reasons = []
    if fields:
        more = f" and {len(fields) - _SHOWN} more" if len(fields) > _SHOWN else ""
        reasons.append(f"with other settings ({', '.join(fields[:_SHOWN])}{more})")
    if inputs:
        reasons.append("from a different " + " and ".join(f"{s}/" for s in inputs))
    return (f"{stage}/ in {workdir} was built {' and '.join(reasons)}: use a new --workdir, or "
            f"--config.overwrite=True to move it aside to {stage}.old-<time>/ and start fresh")


def _make_dir(workdir, stage):
    try:
        return config_lib.stage_dir(workdir, stage)
    except OSError as e:
        raise ConfigError(f"cannot create {os.path.join(workdir, stage)} ({e.strerror}): "
                          "choose a writable --workdir") from e


@contextlib.contextmanager
def locked(directory):
    """Holds an advisory lock on `directory/.lock`; a second holder is refused in one sentence."""
    path = os.path.join(directory, ".lock")
    try:
        f = open(path, "a+")
    except OSError as e:
        raise ConfigError(f"cannot write {path} ({e.strerror}): choose a writable --workdir") from e
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ConfigError(f"{directory} is in use by {holder} (lock {path}): wait for it to "
                              "finish, or use another --workdir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on host {socket.gethostname()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def claim(stage, config, workdir, overwrite=False):
    """Locks workdir/<stage>/ for the body, refuses it if its recorded fingerprint differs (or,
    with `overwrite`, moves it aside and starts a fresh one), then records the new fingerprint
    and config.json. A matching record means resume, or nothing left to do: no file is touched
    but the lock."""
    new = fingerprint(stage, config, workdir)
    directory = _make_dir(workdir, stage)
    with contextlib.ExitStack() as stack:
        stack.enter_context(locked(directory))
        old = read(workdir, stage)
        changed = old is None or old["fingerprint"] != new["fingerprint"]
        # a directory with nothing but the contract's files (a run that stopped before writing
        # anything, or the demo's) has nothing to protect: it is just recorded anew
        if changed and old is not None and set(os.listdir(directory)) - _OWN_FILES:
            require(overwrite, refusal(stage, workdir, old, new))
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            aside = f"{directory}.old-{stamp}"
            os.rename(directory, aside)  # the lock moves with it: lock the fresh directory too
            stack.enter_context(locked(_make_dir(workdir, stage)))
            logging.warning("%s: settings changed and overwrite=True: moved the old outputs to %s",
                            stage, aside)
        if changed:  # a first run here, or a fresh start: say what the directory will hold
            record(stage, config, workdir, new)
        yield
