"""Atomic writers and the one JSONL metric writer.

Every file is written to a temporary name in its own directory and renamed into place, so a
reader (or a resumed run) sees the whole new file or the old one, never half of either.
"""
import contextlib
import json
import os


@contextlib.contextmanager
def _atomic(path):
    """Yields a temporary path beside `path` (same extension: numpy and matplotlib read it) and
    renames it onto `path` once the body has written it."""
    directory, name = os.path.split(os.path.abspath(path))
    # the pid keeps concurrent writers apart; mkstemp would leave the file mode 0600
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp{os.path.splitext(name)[1]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_text(path, text):
    with _atomic(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_json(path, obj, indent=1):
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def savez(path, **arrays):
    import numpy as np
    with _atomic(path) as tmp:
        np.savez(tmp, **arrays)


def savefig(fig, path, **kwargs):
    with _atomic(path) as tmp:
        fig.savefig(tmp, **kwargs)


class MetricWriter:
    """Appends one JSON line `{"step": ..., **metrics}` per `write`; `trim(after_step)` drops the
    lines a killed run wrote past its restored checkpoint, so a resumed log reads as unbroken."""

    def __init__(self, path):
        self.path = path

    def write(self, step, **metrics):
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(step=int(step), **metrics)) + "\n")

    def trim(self, after_step):
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= after_step]
        write_text(self.path, "".join(lines))
