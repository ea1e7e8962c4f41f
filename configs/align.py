"""Align stage: dataset encoder + results encoder + shared MLP -> z_proj in the AE latent space,
trained contrastively (and by regression) against the zoo's train-split z_weight.

Presets: 'tiny' (CI: seconds), default (the demo: well under a minute on 2 CPU cores),
'imagenet' (the thesis's sizes: CLIP ViT-B/32 features, 512-d result embeddings; for accelerators).
"""
import ml_collections

# OpenAI CLIP's image normalisation (CLIPImageProcessor's defaults).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def get_config(arg=None):
    preset = arg or "default"
    if preset not in ("default", "tiny", "imagenet"):
        raise ValueError(f"unknown align preset {preset!r}: use 'tiny', 'default' or 'imagenet'")
    c = ml_collections.ConfigDict()
    c.stage = "align"
    c.preset = preset
    c.seed = 0
    c.encoder = ml_collections.ConfigDict(dict(
        kind="probe",          # 'probe' (the zoo's base network, embedded) | 'clip' (local checkpoint)
        clip_path="",          # directory of a transformers CLIP (FlaxCLIPModel or FlaxCLIPVisionModel)
        clip_mean=CLIP_MEAN,
        clip_std=CLIP_STD,
        images_per_class=0,    # train images averaged per class (0 = all)
        batch_size=256,        # images per feature-extraction call
    ))
    c.results = ml_collections.ConfigDict(dict(
        num_bins=10,           # validation-loss bins (edges: train-zoo quantiles)
        dim=64,                # learnable embedding per bin (the thesis: 512)
        use_accuracy=False,    # also condition on validation accuracy (its own bins and embeddings)
        soft=False,            # interpolate neighbouring bins' embeddings (continuous targets)
    ))
    # () = a linear map from [z_dataset; z_results]: with ~100 train tasks the MLP memorises (held-out
    # retrieval top-1 among 24, real demo zoo + current AE: linear 0.375 vs MLP(256, 256) 0.125; on an
    # earlier AE's latents 0.458 vs 0.417; chance 0.042)
    c.model = ml_collections.ConfigDict(dict(hidden=()))
    c.loss = "multi_positive"  # 'nt_xent' (the thesis) | 'multi_positive' (same task and bin = positives)
    c.temperature = 0.1
    c.regression_weight = 1.0  # + weight x MSE of standardised z_proj vs z_weight (0 = contrastive only)
    # ~200 train snapshots: longer training memorises them (train top-1 0.8) and held-out R² of
    # z_proj falls below 0 (measured on the demo zoo: 0.16 at 200 steps, -0.36 at 1500)
    c.train = ml_collections.ConfigDict(dict(
        steps=200,
        batch_size=256,        # train snapshots per step (all of them if fewer)
        learning_rate=1e-3,
        warmup_steps=20,
        weight_decay=1e-4,
        log_every=50,          # also when validation retrieval is measured
        checkpoint_every=100,
    ))
    c.retrieval_batch = 256    # validation keys: held-out snapshots + train snapshots as distractors

    if preset == "tiny":
        c.results.num_bins = 4
        c.results.dim = 16
        c.model.hidden = (64,)
        c.train.update(steps=60, batch_size=64, warmup_steps=5, log_every=20, checkpoint_every=20)
        c.encoder.images_per_class = 64
    elif preset == "imagenet":
        c.encoder.kind = "clip"
        c.encoder.clip_path = "clip-vit-base-patch32"  # a local copy of openai/clip-vit-base-patch32
        c.encoder.images_per_class = 500
        c.results.dim = 512
        c.results.num_bins = 20
        c.model.hidden = (2048, 2048)
        c.train.update(steps=20000, learning_rate=3e-4, warmup_steps=500, log_every=1000,
                       checkpoint_every=1000)
    return c
