"""Evaluate stage: prompt alignment (requested vs achieved val loss) of every sampler on held-out
class sets and on class sets of held-out models, accuracy against copy / noisy copy / mean model /
random init, novelty, and fine-tuning from samples, as report.md + plots."""
import ml_collections


def get_config(arg=None):
    preset = arg or "default"
    if preset not in ("default", "tiny", "imagenet"):
        raise ValueError(f"unknown evaluate preset {preset!r}: use 'tiny', 'default' or 'imagenet'")
    c = ml_collections.ConfigDict()
    c.stage = "evaluate"
    c.preset = preset
    c.seed = 0
    # class sets evaluated at once by threads (0 = auto: 2 on CPU with one device, else 1); each
    # set's records are the same either way (its own key); one small ResNet's ops keep one core
    c.workers = 0
    c.num_train_tasks = 4        # class sets of held-out (val/test) zoo models; train models saw them
    c.num_held_out_tasks = 8     # held-out class sets (never seen by a zoo model)
    # requested val losses: quantiles of the train zoo's snapshot val losses
    c.target_quantiles = tuple(round(q, 3) for q in [0.05 + 0.1 * i for i in range(10)])
    c.samplers = ("path", "ridge", "flow", "thesis")  # each alone, beside 'best' (keep-the-best)
    c.no_selection = "path"      # the generator reported as `r2_loss_no_selection`
    # keep-the-best's candidates per requested loss: the predicted path at per_segment points per
    # segment + flow samples; 6 chosen over 3 on class sets of held-out models (R² 0.968 vs 0.962,
    # 3 demo seeds, better on each), never on the held-out class sets
    c.pool = ml_collections.ConfigDict(dict(per_segment=6, flow_samples=1))
    c.recalibrate = ml_collections.ConfigDict(dict(enabled=True, num_batches=4, batch_size=64))
    c.finetune = ml_collections.ConfigDict(dict(epochs=(0, 1, 3), learning_rate=3e-3, batch_size=64))
    # SANE's samples as one more fine-tuning start, where the workdir has a trained sane stage:
    # KDE draws (bandwidth x the prompts' std) around the best models of the nearest class sets;
    # bandwidth 0.1 chosen among 0-1 on class sets of val models (seed 0), not held-out ones
    # residual: each draw decoded as its prompt plus (decoding of the draw - the prompt's own), so
    # the decoder's error cancels (False: the plain decoding, 0.51 vs 0.85 at 0 epochs, README)
    c.sane = ml_collections.ConfigDict(dict(enabled=True, num_prompts=4, num_samples=16, bandwidth=0.1,
                                            residual=True))
    if preset == "tiny":
        c.num_train_tasks = 1
        c.num_held_out_tasks = 2
        c.target_quantiles = (0.1, 0.5, 0.9)
        c.pool.per_segment = 2
        c.recalibrate.num_batches = 2
        c.finetune.epochs = (0, 1)
        c.sane.num_samples = 4
    return c
