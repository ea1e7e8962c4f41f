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


def resume(directory, template, *, stage, max_to_keep=1):
    """(manager, step, state): a CheckpointManager at `directory` and its newest state restored
    into `template`'s structure; step 0 and `template` itself when nothing was saved yet."""
    directory = os.path.abspath(directory)
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=False))
    step = manager.latest_step()
    if step is None:
        return manager, 0, template
    try:
        return manager, step, manager.restore(step, args=ocp.args.StandardRestore(template))
    except Exception as e:  # a damaged checkpoint: one clear sentence
        raise ConfigError(f"{stage} checkpoint {directory} could not be read ({type(e).__name__}): "
                          f"delete it and rerun the {stage} stage") from e
