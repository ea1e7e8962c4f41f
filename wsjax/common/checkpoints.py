"""Orbax storage of pytrees of arrays: one checkpoint directory per pytree.

A plain `orbax.checkpoint.StandardCheckpointer().restore(path)` (no wsjax) reads any of them.
"""
import contextlib
import errno
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts

from wsjax.common.config import ConfigError

_CKPT = None


def _checkpointer():
    global _CKPT
    if _CKPT is None:
        _CKPT = ocp.StandardCheckpointer()
    return _CKPT


def exists(path):
    """True only for a complete checkpoint: Orbax's commit marker, its tree metadata readable, and
    every file its OCDBT index points into at least as long as the index says. Reads the index,
    never the arrays (~2 ms), so a truncated or partly deleted checkpoint counts as missing."""
    if not os.path.isfile(os.path.join(path, "_CHECKPOINT_METADATA")):
        return False
    try:
        with open(os.path.join(path, "_METADATA")) as f:
            json.load(f)["tree_metadata"]
        return _index_intact(os.path.abspath(path))
    except Exception:  # a missing or garbled metadata or index file (many types): incomplete
        return False


def _locations(node):
    """The 'btreenode:...' and 'value:...' locations (`base:file:offset:length`) in a dumped
    OCDBT manifest or node; inline values are bytes and are skipped."""
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        for x in node:
            yield from _locations(x)
    elif isinstance(node, str) and node.startswith(("btreenode:", "value:")):
        yield node


def _index_intact(path):
    kv = ts.KvStore.open({"driver": "file", "path": path + "/"}).result()
    pending = [ts.ocdbt.dump(kv).result()]  # the manifest, then the B-tree nodes it reaches
    while pending:
        for location in _locations(pending.pop()):
            kind, base, name, offset, length = location.split(":")
            file = os.path.join(path, base, name)
            if not os.path.isfile(file) or os.path.getsize(file) < int(offset) + int(length):
                return False
            if kind == "btreenode":
                pending.append(ts.ocdbt.dump(kv, location).result())
    return True


def _damaged(path, stage, what):
    """The one sentence for a checkpoint that cannot be used, naming the stage that rewrites it."""
    rerun = f"rerun the '{stage}' stage with this --workdir" if stage else "rerun the stage that wrote it"
    return ConfigError(f"checkpoint {path} {what}: {rerun}")


# Tensorstore reports a failed write as a ValueError whose text holds the OS error; these are the
# workdir's faults (full disk, quota, read-only, permissions), which `run_stage` words as one sentence.
_OS_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


@contextlib.contextmanager
def _workdir_errors(path):
    """Re-raises a checkpoint write that failed for one of `_OS_ERRORS` as that OSError."""
    try:
        yield
    except OSError:
        raise
    except Exception as e:
        code = next((c for c in _OS_ERRORS if os.strerror(c) in str(e)), None)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), path) from e


def save(path, tree):
    """Saves `tree` to `path`, replacing nothing: an existing complete checkpoint is kept."""
    if exists(path):
        return
    ckpt = _checkpointer()
    with _workdir_errors(path):
        ckpt.save(os.path.abspath(path), jax.tree_util.tree_map(np.asarray, tree), force=True)
        ckpt.wait_until_finished()


def restore(path, stage=None):
    """Restores the whole pytree at `path` as numpy arrays; one clear error, naming `stage` (the
    stage that writes it) as the way out, if it is missing or corrupt."""
    if not exists(path):
        raise _damaged(path, stage, "is missing or incomplete")
    try:
        return _checkpointer().restore(os.path.abspath(path))
    except Exception as e:  # Orbax/tensorstore raise many types for a damaged directory.
        raise _damaged(path, stage, f"could not be read ({type(e).__name__})") from e


def restore_subtree(path, item, stage=None):
    """Restores only the leaves named by the nested dict `item` (values ignored)."""
    if not exists(path):
        raise _damaged(path, stage, "is missing or incomplete")
    try:
        return ocp.PyTreeCheckpointer().restore(
            os.path.abspath(path), args=ocp.args.PyTreeRestore(item=item, partial_restore=True))
    except Exception as e:
        raise _damaged(path, stage, f"could not be read ({type(e).__name__})") from e


class Manager:
    """A stage's rolling training checkpoints (Orbax's CheckpointManager): `save(step, tree)` and
    `close()`, so that no stage imports Orbax."""

    def __init__(self, directory, max_to_keep):
        self.directory = directory
        self._manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=False))

    def latest_step(self):
        return self._manager.latest_step()

    def restore(self, step, template):
        return self._manager.restore(step, args=ocp.args.StandardRestore(template))

    def save(self, step, tree):
        """Saves `tree` (numpy, or jax arrays Orbax can gather) as `step` and waits for it."""
        with _workdir_errors(self.directory):
            self._manager.save(step, args=ocp.args.StandardSave(tree))
            self._manager.wait_until_finished()

    def close(self):
        self._manager.close()


def resume(directory, template, *, stage, max_to_keep=1):
    """(manager, step, state): a `Manager` at `directory` and its newest state restored into
    `template`'s structure; step 0 and `template` itself when nothing was saved yet."""
    manager = Manager(os.path.abspath(directory), max_to_keep)
    step = manager.latest_step()
    if step is None:
        return manager, 0, template
    try:
        return manager, step, manager.restore(step, template)
    except Exception as e:  # a damaged checkpoint: one clear sentence
        raise ConfigError(f"{stage} checkpoint {manager.directory} could not be read ({type(e).__name__}): "
                          f"delete it and rerun the {stage} stage") from e
