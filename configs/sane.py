"""SANE stage: a transformer encoder-decoder over the zoo's weight tokens, trained on windows of
the token sequence with reconstruction + NT-Xent between two augmented views (seed 004).

Presets: 'tiny' (CI, seconds), default (the embedded-MNIST zoo of configs/zoo.py, 2 CPU cores),
'accelerator' (ResNet-18s at width 64, e.g. the zoo's 'cifar10' preset, on a GPU/TPU host).
"""
import ml_collections


def get_config(arg=None):
    preset = arg or "default"
    c = ml_collections.ConfigDict()
    c.stage = "sane"
    c.preset = preset
    c.seed = 0
    c.tokens = ml_collections.ConfigDict(dict(
        token_size=292,        # values per token: a width-4 ResNet-18's widest channel (3*3*32 + 4 BN)
        window=64,             # tokens per training window (the sequence has ~300 at width 4)
        # each block's inner channels matched to a reference network's before tokenising (weight
        # matching): embeddings are invariant to those channel permutations by construction
        align=True,
        # the tokenised zoo is kept on the device where it takes at most this share of the
        # device's memory (each step then gathers its windows there), else on the host
        device_share=0.5,
    ))
    c.model = ml_collections.ConfigDict(dict(
        dim=64, latent_dim=32, projection_dim=32, encoder_layers=2, decoder_layers=2,
        num_heads=4, mlp_ratio=2,
        # a learned encoding per absolute token position, beside segment and channel (which
        # already name each token): False saves 2 x num_tokens x dim parameters (44M at width
        # 64 in the accelerator preset); at width 4 the same property scores, worse reconstruction
        position_table=True,
        dtype="float32",       # the computation's ('bfloat16' on accelerators; parameters float32)
        # 'xla' (flax's einsum attention), 'cudnn' (cuDNN's fused flash attention: NVIDIA GPUs,
        # bfloat16) or 'auto' (cudnn where it runs, else xla); same function and parameters
        attention="auto"))
    c.augment = ml_collections.ConfigDict(dict(
        permute=False,         # a function-preserving channel permutation per view (the SANE
                               # paper's invariance by augmentation; only with tokens.align=False)
        noise=0.05,            # Gaussian noise on normalised tokens (x their std)
        erase_probability=0.5,  # random erasing of a contiguous span of the window
        erase_fraction=0.25,   # ... of at most this share of its tokens
    ))
    c.loss = ml_collections.ConfigDict(dict(
        reconstruction=1.0,    # masked MSE of the clean (permuted) tokens of each view
        contrastive=0.1,       # NT-Xent between the two views' pooled projections
        temperature=0.1,
    ))
    c.train = ml_collections.ConfigDict(dict(
        steps=1500,
        batch_size=32,         # snapshots per step (two views each)
        learning_rate=1e-3,
        warmup_steps=100,
        end_lr_fraction=0.05,
        weight_decay=1e-4,
        grad_clip=1.0,
        checkpoint_every=250,  # also when the val-model loss is measured for selection
        log_every=50,
    ))
    if preset == "tiny":
        c.tokens.update(token_size=96, window=32)  # chunks wide channels into two tokens
        c.model.update(dim=32, latent_dim=8, projection_dim=8, encoder_layers=1, decoder_layers=1,
                       num_heads=2)
        c.train.update(steps=60, batch_size=8, warmup_steps=5, checkpoint_every=20, log_every=10)
    elif preset == "accelerator":
        c.tokens.update(token_size=288, window=512)
        c.model.update(dim=512, latent_dim=128, projection_dim=128, encoder_layers=8,
                       decoder_layers=8, num_heads=8, mlp_ratio=4, dtype="bfloat16")
        c.train.update(steps=50_000, batch_size=64, learning_rate=3e-4, warmup_steps=1000,
                       checkpoint_every=2000, log_every=200)
    elif preset != "default":
        raise ValueError(f"unknown sane preset {preset!r}: use 'tiny', 'default' or 'accelerator'")
    return c
