"""bench_pca: our PCA vs scikit-learn IncrementalPCA (the thesis's method) on the same leaves.

Default: a synthetic zoo with thesis-like shapes (240 snapshots of a width-16 ResNet-18, CIFAR
stem: low-rank signal with a power-law spectrum plus noise per leaf). `source='zoo'` benchmarks
the train snapshots of the zoo in --workdir instead. Preset 'tiny': seconds, for CI.
"""
import ml_collections


def get_config(arg=None):
    preset = arg or "default"
    c = ml_collections.ConfigDict()
    c.stage = "bench_pca"
    c.preset = preset
    c.seed = 0
    c.bench = ml_collections.ConfigDict(dict(
        source="synthetic",       # 'synthetic' | 'zoo' (train snapshots of the zoo in --workdir)
        components=64,            # k per leaf for every method (the thesis's setting)
        dim_limit=64,             # leaves of at most this size are not PCA'd (not benchmarked)
        solvers=("gram", "rsvd", "auto"),
        oversample=10,
        power_iters=2,
        repeats=2,                # warm timings: best of this many after one compiling run
        ipca_batch_size=0,        # 0 = sklearn's default (5 x n_features: one batch here)
        synthetic=ml_collections.ConfigDict(dict(
            num_snapshots=240, width=16, stem="small", num_classes=3, resolution=32, channels=3,
            rank=96, decay=0.7, noise=0.05, seed=0)),
    ))
    if preset == "tiny":
        c.bench.synthetic.num_snapshots = 40
        c.bench.synthetic.width = 4
        c.bench.synthetic.resolution = 16
        c.bench.synthetic.rank = 12
        c.bench.components = 8
        c.bench.repeats = 1
    elif preset != "default":
        raise ValueError(f"unknown bench_pca preset {preset!r}: use 'tiny' or 'default'")
    return c
