"""Orbax storage of pytrees of arrays: one checkpoint directory per pytree.

A plain `orbax.checkpoint.StandardCheckpointer().restore(path)` (no wsjax) reads any of them.
"""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from wsjax.common.config import ConfigError

_CKPT = None


def _checkpointer():
    global _CKPT
    if _CKPT is None:
        _CKPT = ocp.StandardCheckpointer()
    return _CKPT


def exists(path):
    """True only for a complete checkpoint (Orbax commits by atomic rename)."""
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA"))


def save(path, tree):
    """Saves `tree` to `path`, replacing nothing: an existing complete checkpoint is kept."""
    if exists(path):
        return
    ckpt = _checkpointer()
    ckpt.save(os.path.abspath(path), jax.tree_util.tree_map(np.asarray, tree), force=True)
    ckpt.wait_until_finished()


def restore(path):
    """Restores the whole pytree at `path` as numpy arrays; one clear error if missing/corrupt."""
    if not exists(path):
        raise ConfigError(f"checkpoint {path} is missing or incomplete")
    try:
        return _checkpointer().restore(os.path.abspath(path))
    except Exception as e:  # Orbax/tensorstore raise many types for a damaged directory.
        raise ConfigError(f"checkpoint {path} could not be read ({type(e).__name__}): "
                          "it is corrupt; delete it and rerun the stage") from e


def restore_subtree(path, item):
    """Restores only the leaves named by the nested dict `item` (values ignored)."""
    if not exists(path):
        raise ConfigError(f"checkpoint {path} is missing or incomplete")
    try:
        return ocp.PyTreeCheckpointer().restore(
            os.path.abspath(path), args=ocp.args.PyTreeRestore(item=item, partial_restore=True))
    except Exception as e:
        raise ConfigError(f"checkpoint {path} could not be read ({type(e).__name__}): "
                          "it is corrupt; delete it and rerun the stage") from e
