"""Align stage: (dataset, results) -> z_proj in the weight latent space. `align.load(workdir)`."""
import os

import jax
import numpy as np

from wsjax.common import config as config_lib
from wsjax.common import checkpoints
from wsjax.common.config import require
from wsjax.align import losses
from wsjax.align import model as model_lib


class Aligner:
    """A trained shared encoder: `project(task_features, val_loss[, val_accuracy]) -> z_proj`."""

    def __init__(self, config, params, stats):
        self.config, self.params, self.stats = config, params, stats
        self.module = model_lib.build(config, stats, stats["z_mean"].shape[0])
        self._apply = jax.jit(self.module.apply)

    def bins(self, val_loss, val_accuracy=None):
        """The results encoder's input (`model.results_bins`) for the requested results."""
        require(val_accuracy is not None or not self.config.results.use_accuracy,
                "this aligner conditions on accuracy: pass val_accuracy")
        return model_lib.results_bins(self.stats, self.config.results, val_loss, val_accuracy)

    def project_standardised(self, task_features, val_loss, val_accuracy=None):
        s = self.stats
        feats = (np.asarray(task_features, np.float32) - s["feat_mean"]) / s["feat_std"]
        return np.asarray(self._apply({"params": self.params}, feats, self.bins(val_loss, val_accuracy)))

    def project(self, task_features, val_loss, val_accuracy=None):
        """z_proj [N, D] in the AE latent space from task features [N, k*F] and results [N]."""
        s = self.stats
        z = self.project_standardised(task_features, val_loss, val_accuracy)
        return s["z_mean"] + s["z_std"] * z


def paths(workdir):
    d = os.path.join(workdir, "align")
    return dict(params=os.path.join(d, "params"), stats=os.path.join(d, "stats.npz"),
                metrics=os.path.join(d, "metrics.json"), ckpt=os.path.join(d, "ckpt"),
                log=os.path.join(d, "log.jsonl"))


def load(workdir):
    """The Aligner the align stage trained in `workdir`; a clear error if it has not finished."""
    p = paths(workdir)
    require(checkpoints.exists(p["params"]) and os.path.exists(p["stats"]),
            f"{p['params']} not found: run the 'align' stage with this --workdir first")
    config = config_lib.load(workdir, "align")
    with np.load(p["stats"]) as f:
        stats = {k: f[k] for k in f.files}
    return Aligner(config, checkpoints.restore(p["params"], stage="align")["params"], stats)
