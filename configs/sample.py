"""Sample stage: (class set, target result) -> N ResNet-18 weight sets, saved like zoo models."""
import ml_collections


def get_config(arg=None):
    preset = arg or "default"
    if preset not in ("default", "tiny", "imagenet"):
        raise ValueError(f"unknown sample preset {preset!r}: use 'tiny', 'default' or 'imagenet'")
    c = ml_collections.ConfigDict()
    c.stage = "sample"
    c.preset = preset
    c.seed = 0
    c.classes = ""             # ids '1-4-7' or names 'cat,dog,ship'; '' = the first held-out set
    c.target_loss = -1.0       # requested validation loss; < 0 = the zoo's median final val loss
    c.target_accuracy = -1.0   # requested accuracy (the thesis sampler conditions on it); < 0 = zoo median
    # 'best': generate a pool (the predicted path + flow samples), keep the `num_samples` whose
    # loss on the task's train images is nearest the request; 'path' | 'ridge' | 'flow': one
    # generator alone; 'thesis': align + AE decoder (latent noise below).
    c.sampler = "best"
    c.num_samples = 4
    c.pool = ml_collections.ConfigDict(dict(per_segment=3, flow_samples=8))
    c.latent_noise = 0.25      # thesis sampler: noise in units of the train latents' std
    c.recalibrate = ml_collections.ConfigDict(dict(enabled=True, num_batches=4, batch_size=64))
    if preset == "tiny":
        c.num_samples = 2
        c.pool.flow_samples = 2
        c.recalibrate.num_batches = 2
    return c
