"""The whole pipeline on the embedded data: zoo -> pca -> ae -> align -> generator -> sample -> evaluate.

`python -m launch.main --config=configs/demo.py --workdir=DIR`; any stage's field can be
overridden, e.g. `--config.zoo.num_models=96`. Preset 'tiny' is the CI-size pipeline.
"""
import ml_collections

from configs import ae, align, evaluate, generator, pca, sample, zoo

STAGES = ("zoo", "pca", "ae", "align", "generator", "sample", "evaluate")


def get_config(arg=None):
    preset = arg or "default"
    if preset not in ("default", "tiny"):
        raise ValueError(f"unknown demo preset {preset!r}: use 'tiny' or 'default'")
    sub = "tiny" if preset == "tiny" else None
    c = ml_collections.ConfigDict()
    c.stage = "demo"
    c.preset = preset
    c.stages = STAGES
    c.seeds = (0,)  # several, e.g. '(0,1,2)': the whole pipeline per seed, then mean ± std
    for name, module in zip(STAGES, (zoo, pca, ae, align, generator, sample, evaluate)):
        c[name] = module.get_config(sub)
    if preset == "tiny":
        # The behaviour loss is tested in tests/ae; compiling its unrolled ResNets dominates
        # the CI-size pipeline on CPU (~100 s), so the tiny demo trains on weight losses only.
        c.ae.loss.behaviour = 0.0
    return c
