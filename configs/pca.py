"""PCA stage: per-named-parameter PCA of the zoo (thesis Alg. 3.1) with our randomized SVD.

Presets: 'tiny' (CI, seconds), default (the embedded-MNIST zoo of configs/zoo.py), 'imagenet'
(real size: 2,000 snapshots of an 11.7 M-parameter ResNet-18, for an accelerator host).
"""
import ml_collections


def get_config(arg=None):
    preset = arg or "default"
    c = ml_collections.ConfigDict()
    c.stage = "pca"
    c.preset = preset
    c.seed = 0                        # PRNG of the randomized SVD sketches
    c.pca = ml_collections.ConfigDict(dict(
        var_threshold=1e-10,          # mean per-coordinate variance below this: keep the mean only
        dim_limit=64,                 # leaves of at most this many values: centred, uncompressed
        explained_variance=0.999,     # keep the fewest components reaching this share of variance
        max_components=512,           # ... but never more than this many per leaf
        solver="auto",                # 'auto' | 'rsvd' | 'gram' (exact; best when models << dim)
        oversample=10,                # randomized SVD: extra sketch columns
        power_iters=2,                # randomized SVD: QR-orthonormalised power iterations
        block_bytes=256 * 2**20,      # leaves streamed and fitted together (all snapshots, fp32)
        var_floor=1e-5,               # decoded BatchNorm running variances are floored here
    ))
    if preset == "tiny":
        c.pca.max_components = 8
        c.pca.dim_limit = 16
        c.pca.block_bytes = 64 * 2**10   # several blocks even on a tiny zoo: exercises streaming
    elif preset == "imagenet":
        # Largest leaf: 3x3x512x512 = 2.36 M values x 2,000 snapshots x 4 B = 18.9 GB in one block.
        c.pca.block_bytes = 24 * 2**30
        c.pca.max_components = 1024
        c.pca.dim_limit = 1024
    elif preset != "default":
        raise ValueError(f"unknown pca preset {preset!r}: use 'tiny', 'default' or 'imagenet'")
    return c
