"""Generator stage: conditional generators of weights given (class set, requested loss), fitted on
every train (class set, snapshot) pair of the zoo, in a latent PCA of the pipeline's coefficients."""
import ml_collections


def get_config(arg=None):
    preset = arg or "default"
    if preset not in ("default", "tiny", "imagenet"):
        raise ValueError(f"unknown generator preset {preset!r}: use 'tiny', 'default' or 'imagenet'")
    c = ml_collections.ConfigDict()
    c.stage = "generator"
    c.preset = preset
    c.seed = 0
    c.latent_dim = 256      # capped at the train span (train snapshots - 1)
    c.l2 = 10.0             # ridge penalty on standardised features (chosen on val models, seed 0)
    c.loss_bumps = ml_collections.ConfigDict(dict(num=8, width=0.5))  # radial bumps on log loss
    # the path's achieved-loss curve: paths of each fold's class sets predicted without them
    c.cross_fit = ml_collections.ConfigDict(dict(folds=4))
    c.workers = 0           # cross-fitted paths measured at once by threads (0 = auto: 2 on one CPU)
    c.recalibrate = ml_collections.ConfigDict(dict(num_batches=4, batch_size=64))
    c.flow = ml_collections.ConfigDict(dict(
        hidden=512, depth=3, steps=2000, batch_size=128, learning_rate=1e-3,
        sample_steps=32, num_freqs=4))
    if preset == "tiny":
        c.latent_dim = 32
        c.cross_fit.folds = 2
        c.recalibrate.num_batches = 2
        c.flow.hidden = 64
        c.flow.steps = 200
        c.flow.sample_steps = 8
    elif preset == "imagenet":
        c.latent_dim = 1024
        c.flow.hidden = 2048
        c.flow.steps = 20000
    return c
