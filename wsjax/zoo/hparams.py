"""Per-model hyperparameters of the zoo, all drawn from `config.seed` (thesis Table 3.1).

Optimizer Adam or SGD at random, learning rate log-uniform in the optimizer's range, weight decay
log-uniform, momentum uniform (SGD), early snapshot epoch ~ U(early_epoch), max epoch ~ a normal
truncated to `max_epoch_range`, the task's class set (`tasks.models_per_set` models share one), and
the model's split (train/val/test; a val/test model's class set keeps train models where it can).
The variety axes (init method, activation, train-set fraction, dropout rate, label noise) are
drawn uniformly from their tuples of choices by a stream of their own, so the draws above stay
what they were without them; with `train.equal_steps`, a model on a fraction trains more epochs
over it (`equal_steps`).

Snapshots follow one of two schedules: the thesis's ('early' at the early epoch, 'final' at the max
epoch) when `train.snapshot_steps` is empty, else a step schedule ('step<N>' at each listed step
before the model's last, 'final' at its last) whose val losses span chance to converged.
"""
import dataclasses

import numpy as np

from wsjax import data
from wsjax.common.config import require
from wsjax.data.tasks import task_indices
from wsjax.models import ACTIVATIONS
from wsjax.zoo.init import INIT_METHODS

OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    model_id: int
    classes: tuple
    split: str          # 'train' | 'val' | 'test' (models held out of PCA/AE)
    optimizer: str      # 'adam' | 'sgd'
    learning_rate: float
    weight_decay: float
    momentum: float     # 0 for Adam
    early_epoch: int
    max_epoch: int
    seed: int           # data-order seed of this model
    init_method: str    # kernel initializer (wsjax.zoo.init.INIT_METHODS)
    activation: str     # 'relu' | 'gelu' | 'tanh'
    train_fraction: float  # share of its task's train images it trains on
    dropout_rate: float    # on the pooled features before the head, in training
    label_noise: float     # share of its train images whose label is another class


def validate(config):
    """One clear ConfigError for a bad zoo field, before any work."""
    t = config.train
    require(config.num_models >= 1, f"config.num_models must be >= 1, got {config.num_models}")
    s = config.model_splits
    require(s.val >= 0 and s.test >= 0 and s.val + s.test < config.num_models,
            f"config.model_splits (val={s.val}, test={s.test}) must leave >= 1 train model "
            f"of config.num_models={config.num_models}")
    require(config.init in ("shared", "per_model", "pretrained"),
            f"config.init must be 'shared', 'per_model' or 'pretrained', got {config.init!r}")
    require(config.strategy in ("auto", "unroll", "vmap", "sequential"),
            f"config.strategy must be 'auto', 'unroll', 'vmap' or 'sequential', got {config.strategy!r}")
    require(config.cohort_size >= 1, f"config.cohort_size must be >= 1, got {config.cohort_size}")
    require(config.num_devices >= 0, f"config.num_devices must be >= 0, got {config.num_devices}")
    require(config.get("workers", 0) >= 0, f"config.workers must be >= 0, got {config.get('workers')}")
    require(config.get("steps_per_call", 1) >= 1,
            f"config.steps_per_call must be >= 1, got {config.get('steps_per_call')}")
    require(t.batch_size >= 1, f"config.train.batch_size must be >= 1, got {t.batch_size}")
    require(len(t.optimizers) >= 1 and all(o in OPTIMIZERS for o in t.optimizers),
            f"config.train.optimizers must be a non-empty subset of {OPTIMIZERS}, got {t.optimizers}")
    for name in ("adam_lr", "sgd_lr", "weight_decay"):
        lo, hi = getattr(t, name)
        require(0 < lo <= hi, f"config.train.{name} must be (lo, hi) with 0 < lo <= hi, got {(lo, hi)}")
    lo, hi = t.momentum
    require(0 <= lo <= hi < 1, f"config.train.momentum must be in [0, 1), got {(lo, hi)}")
    steps = tuple(t.get("snapshot_steps", ()))
    require(all(int(v) == v and v >= 0 for v in steps) and list(steps) == sorted(set(steps)),
            f"config.train.snapshot_steps must be increasing integers >= 0, got {steps}")
    per_set = config.tasks.get("models_per_set", 1)
    require(per_set >= 1, f"config.tasks.models_per_set must be >= 1, got {per_set}")
    lo, hi = t.early_epoch
    require(1 <= lo <= hi, f"config.train.early_epoch must be (lo, hi) with 1 <= lo <= hi, got {(lo, hi)}")
    lo, hi = t.max_epoch_range
    require(t.early_epoch[1] < lo <= hi,
            f"config.train.max_epoch_range must be (lo, hi) with early_epoch[1] < lo <= hi, got {(lo, hi)}")
    require(t.diverge_loss_factor > 0,
            f"config.train.diverge_loss_factor must be > 0, got {t.diverge_loss_factor}")
    require(t.max_epoch_std >= 0, f"config.train.max_epoch_std must be >= 0, got {t.max_epoch_std}")
    _require_choices("config.init_methods", config.init_methods, INIT_METHODS)
    require(config.init == "per_model" or len(config.init_methods) == 1,
            f"config.init_methods must hold one method under init={config.init!r} (its one shared "
            f"init), got {tuple(config.init_methods)}")
    _require_choices("config.model.activations", config.model.activations, ACTIVATIONS)
    require(config.init != "pretrained" or len(config.model.activations) == 1,
            f"config.model.activations must hold one activation under init='pretrained' (its base "
            f"network's), got {tuple(config.model.activations)}")
    fractions = tuple(t.train_fractions)
    require(len(fractions) >= 1 and all(0 < f <= 1 for f in fractions),
            f"config.train.train_fractions must be a non-empty tuple of values in (0, 1], got {fractions}")
    for field in ("dropout_rates", "label_noises"):
        values = _choices(config, field)
        require(len(values) >= 1 and all(0 <= v < 1 for v in values),
                f"config.train.{field} must be a non-empty tuple of values in [0, 1), got {values}")


def _choices(config, field):
    return tuple(config.train.get(field, (0.0,)))  # configs older than the field: none


def _require_choices(field, choices, allowed):
    require(len(choices) >= 1 and all(c in allowed for c in choices),
            f"{field} must be a non-empty tuple of {allowed}, got {tuple(choices)}")


def _log_uniform(rng, lo, hi, n):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def truncated_normal_int(rng, mean, std, lo, hi, n):
    """Integers ~ N(mean, std) truncated to [lo, hi] by rejection (thesis: N(100, 15) in [50, 150])."""
    out = np.empty(n, np.int64)
    for i in range(n):
        while True:
            v = int(round(rng.normal(mean, std))) if std > 0 else int(round(mean))
            if lo <= v <= hi:
                break
            if std == 0:
                v = int(np.clip(v, lo, hi))
                break
        out[i] = v
    return out


def snapshot_schedule(config, spec, steps_per_epoch):
    """((tag, step), ...) of one model in step order; step 0 is the init."""
    last = spec.max_epoch * steps_per_epoch
    steps = config.train.get("snapshot_steps", ())
    if not steps:
        return (("early", spec.early_epoch * steps_per_epoch), ("final", last))
    return tuple((f"step{int(s):05d}", int(s)) for s in steps if s < last) + (("final", last),)


def _splits(config, tasks, rng):
    """'train' | 'val' | 'test' per model; with several models per class set, val/test models are
    drawn one per class set so each of their class sets keeps train models."""
    n, s = int(config.num_models), config.model_splits
    split = np.array(["train"] * n, dtype=object)
    per_set = {}
    for m, t in enumerate(tasks):
        per_set.setdefault(t, []).append(m)
    shared = [ms[0] for ms in per_set.values() if len(ms) > 1]
    pool = shared if len(shared) >= s.val + s.test else list(range(n))
    order = [pool[i] for i in rng.permutation(len(pool))]
    split[order[:s.val]] = "val"
    split[order[s.val:s.val + s.test]] = "test"
    return split


def sample_specs(config, num_classes):
    """The ModelSpec of every model of the zoo, deterministic in `config.seed`."""
    validate(config)
    t, n = config.train, int(config.num_models)
    tasks = data.task_set(config.tasks, num_classes).sample(
        n, config.seed, config.tasks.get("models_per_set", 1), config.tasks.get("cover_slots", False))
    rng = np.random.default_rng([config.seed, 1])
    opt = rng.choice(list(t.optimizers), n)
    lr = np.where(opt == "adam", _log_uniform(rng, *t.adam_lr, n), _log_uniform(rng, *t.sgd_lr, n))
    wd = _log_uniform(rng, *t.weight_decay, n)
    mom = np.where(opt == "sgd", rng.uniform(*t.momentum, n), 0.0)
    early = rng.integers(t.early_epoch[0], t.early_epoch[1] + 1, n)
    final = truncated_normal_int(rng, t.max_epoch_mean, t.max_epoch_std, *t.max_epoch_range, n)
    split = _splits(config, tasks, rng)
    variety = np.random.default_rng([config.seed, 2])
    method = variety.choice(list(config.init_methods), n)
    act = variety.choice(list(config.model.activations), n)
    fraction = variety.choice(list(t.train_fractions), n)
    dropout = variety.choice(list(_choices(config, "dropout_rates")), n)
    noise = variety.choice(list(_choices(config, "label_noises")), n)
    return [ModelSpec(i, tuple(int(c) for c in tasks[i]), str(split[i]), str(opt[i]), float(lr[i]),
                      float(wd[i]), float(mom[i]), int(early[i]), int(final[i]),
                      int(config.seed) * 1_000_003 + i, str(method[i]), str(act[i]),
                      float(fraction[i]), float(dropout[i]), float(noise[i]))
            for i in range(n)]


def train_indices(labels, classes, train_fraction, seed, label_noise=0.0):
    """(indices into the train images, local labels) a model trains on: its task's images, or a
    `train_fraction` share of them drawn from its data seed (in index order); with `label_noise`,
    that share of them (drawn from its seed too) labelled as another of its classes, uniformly."""
    idx, local = task_indices(labels, classes)
    if train_fraction < 1.0:
        # streams apart from the data order's, default_rng([seed, epoch])
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
        keep = np.sort(rng.permutation(len(idx))[:max(1, round(train_fraction * len(idx)))])
        idx, local = idx[keep], local[keep]
    if label_noise > 0:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
        flip = rng.permutation(len(idx))[:round(label_noise * len(idx))]
        local = local.copy()
        local[flip] = (local[flip] + rng.integers(1, len(classes), len(flip))) % len(classes)
    return idx, local


def equal_steps(specs, labels, own_steps, batch_size):
    """`specs` with the epochs of models on a train fraction scaled by (steps per epoch of the
    whole task / of their subset, `own_steps[model_id]`): every model takes about as many steps as
    on its whole task, so small subsets are seen many times over and the generalisation gap
    spreads with the fraction."""
    out = []
    for s in specs:
        whole, own = len(task_indices(labels, s.classes)[0]) // batch_size, own_steps[s.model_id]
        scale = lambda epochs: max(1, round(epochs * whole / own))  # noqa: E731
        out.append(dataclasses.replace(s, early_epoch=scale(s.early_epoch), max_epoch=scale(s.max_epoch)))
    return out
