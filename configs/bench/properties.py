"""bench_properties: how well each representation of a zoo's weights predicts what the network
does (issue 11). Reads the finished zoo in --workdir and the pca / ae / sane stages where they ran.

Presets: 'tiny' (CI, seconds on a tiny zoo), default (the embedded-MNIST trajectory zoo).
"""
import ml_collections
import numpy as np


def get_config(arg=None):
    preset = arg or "default"
    c = ml_collections.ConfigDict()
    c.stage = "bench_properties"
    c.preset = preset
    c.bench = ml_collections.ConfigDict(dict(
        # each seed draws its own held-out class sets, CV folds and MLP inits: mean ± std over them
        seeds=(0, 1, 2),
        held_out_fraction=0.25,   # class sets whose models are all held out of probe training
        # those whose stage ran are used (weight_stats, delta_stats, probe_outputs and
        # sensitivity need none); 'a+b': a's and b's features side by side
        representations=("weight_stats", "delta_stats", "pca", "ae", "sane", "sane_segments", "sane_decoded",
                         "probe_outputs", "sensitivity", "weight_stats+probe_outputs",
                         "weight_stats+probe_outputs+sensitivity"),
        # 'probe_outputs', 'sensitivity': unlabelled train images every network is run on; 512
        # read label-noise zoos better (val loss R² 0.84 vs 0.78, README) at ~7x the probe time
        probe_images=128,
        pca_components=64,        # 'pca': top directions of the train rows' PCA coefficients
        properties=("val_accuracy", "val_loss", "generalisation_gap", "step", "learning_rate"),
        # skipped if absent or one class; train_fraction: how much data, read off the weights
        categorical=("optimizer", "init_method", "activation", "train_fraction", "dropout_rate",
                     "label_noise"),
        cv_folds=4,               # grouped by class set, over the train rows only
        train_images=512,         # generalisation gap: each snapshot's train loss on this many images
    ))
    c.ridge = ml_collections.ConfigDict(dict(
        alphas=tuple(float(a) for a in np.logspace(-3, 4, 15)),
        transforms=("identity", "log"),  # of the target, chosen by CV (log: shifted past zeros)
    ))
    c.logistic = ml_collections.ConfigDict(dict(inverse_regularisation=(0.01, 0.1, 1.0, 10.0)))
    # full batch, AdamW; the CV folds and the final fit train together under vmap
    c.mlp = ml_collections.ConfigDict(dict(hidden=(64,), steps=500, learning_rate=3e-3,
                                           weight_decay=1e-2))
    # scikit-learn's HistGradientBoosting* at its defaults (max_iter 100, learning_rate 0.1,
    # max_leaf_nodes 31; no early stopping below 10,000 rows), not tuned
    c.gbm = ml_collections.ConfigDict(dict(max_iter=100, learning_rate=0.1, max_leaf_nodes=31))
    if preset == "tiny":
        c.bench.seeds = (0,)
        c.bench.pca_components = 4
        c.bench.cv_folds = 2
        c.bench.train_images = 64
        c.bench.probe_images = 32
        c.mlp.update(hidden=(16,), steps=100)
        c.gbm.max_iter = 10
    elif preset != "default":
        raise ValueError(f"unknown bench_properties preset {preset!r}: use 'tiny' or 'default'")
    return c
