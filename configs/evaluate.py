"""Evaluate stage: sampled vs requested results, zero-shot on held-out class sets, retrieval,
reconstruction, and baselines (copy, mean model, random init), as report.md + plots."""
import ml_collections


def get_config(arg=None):
    preset = arg or "default"
    if preset not in ("default", "tiny", "imagenet"):
        raise ValueError(f"unknown evaluate preset {preset!r}: use 'tiny', 'default' or 'imagenet'")
    c = ml_collections.ConfigDict()
    c.stage = "evaluate"
    c.preset = preset
    c.seed = 0
    c.num_train_tasks = 12       # class sets zoo models trained on (taken from test-split models first)
    c.num_held_out_tasks = 8     # held-out class sets (never seen by a zoo model)
    c.target_quantiles = (0.05, 0.25, 0.5, 0.75, 0.95)  # requested results: zoo val-loss quantiles
    c.recalibrate = ml_collections.ConfigDict(dict(enabled=True, num_batches=8, batch_size=64))
    c.heatmap_size = 8           # snapshots in the z_proj vs z_weight cosine heatmap
    if preset == "tiny":
        c.num_train_tasks = 2
        c.num_held_out_tasks = 2
        c.target_quantiles = (0.25, 0.75)
        c.recalibrate.num_batches = 2
        c.heatmap_size = 4
    return c
