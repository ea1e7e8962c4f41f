import errno
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from wsjax.common import checkpoints

# How tensorstore words a failed write (absl status from the OS error): a ValueError, not an OSError.
_FULL = ValueError('Error writing local file "x/d/1": [OS error 28: No space left on device]')


def _fail(*args, **kwargs):
    raise _FULL


def test_a_full_disk_inside_an_orbax_save_becomes_the_os_error(tmp_path, monkeypatch):
    monkeypatch.setattr(ocp.StandardCheckpointer, "save", _fail)
    path = str(tmp_path / "ckpt")
    with pytest.raises(OSError) as e:
        checkpoints.save(path, {"w": np.ones(3)})
    assert e.value.errno == errno.ENOSPC and e.value.filename == path and e.value.__cause__ is _FULL


def test_a_full_disk_inside_a_manager_save_becomes_the_os_error(tmp_path, monkeypatch):
    manager, step, state = checkpoints.resume(str(tmp_path / "run"), {"w": np.ones(3)}, stage="ae")
    assert step == 0
    monkeypatch.setattr(ocp.CheckpointManager, "save", _fail)
    with pytest.raises(OSError) as e:
        manager.save(1, state)
    assert e.value.errno == errno.ENOSPC and e.value.filename == os.path.abspath(tmp_path / "run")


def test_other_save_failures_pass_through_unchanged(tmp_path, monkeypatch):
    bug = ValueError("a tree of unsupported leaves")
    monkeypatch.setattr(ocp.StandardCheckpointer, "save", lambda *a, **k: (_ for _ in ()).throw(bug))
    with pytest.raises(ValueError) as e:
        checkpoints.save(str(tmp_path / "ckpt"), {"w": np.ones(3)})
    assert e.value is bug


def test_a_manager_resumes_at_its_newest_step(tmp_path):
    directory = str(tmp_path / "run")
    manager, _, _ = checkpoints.resume(directory, {"w": np.zeros(3)}, stage="ae", max_to_keep=2)
    for step in (1, 2, 3):
        manager.save(step, {"w": np.full(3, float(step))})
    manager.close()
    manager, step, state = checkpoints.resume(directory, {"w": np.zeros(3)}, stage="ae")
    manager.close()
    assert step == 3 and np.array_equal(state["w"], np.full(3, 3.0))
    assert sorted(os.listdir(directory)) == ["2", "3"]  # max_to_keep
