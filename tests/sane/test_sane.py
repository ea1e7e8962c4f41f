import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import sane as sane_configs
from conftest import fake_zoo_copy
from wsjax import models, sane, stages
from wsjax.common import config as config_lib
from wsjax.properties import representations as reps
from wsjax.sane import model as model_lib
from wsjax.sane import sample as sane_sample
from wsjax.sane import stage as sane_stage
from wsjax.sane import tokens
from wsjax.zoo import snapshots
from wsjax.zoo import step as step_lib


@pytest.fixture(scope="module")
def sane_workdir(fake_zoo, tmp_path_factory):
    """A copy of the fake zoo with the tiny SANE stage trained on it (the fixture stays untouched)."""
    return fake_zoo_copy(fake_zoo, tmp_path_factory, "sane", sane_configs.get_config("tiny"))


def _model(workdir, model_id=3):
    zoo = config_lib.load(workdir, "zoo")
    module = models.build(zoo.model, zoo.tasks.k)
    return module, snapshots.load_variables(workdir, model_id, "final")


def test_channel_permutation_changes_weights_but_not_logits(fake_zoo):
    module, variables = _model(fake_zoo)
    permuted = tokens.permute_channels(variables, jax.random.key(1))
    assert not np.allclose(permuted["params"]["layer2_0"]["conv1"]["kernel"],
                           variables["params"]["layer2_0"]["conv1"]["kernel"])
    assert not np.allclose(permuted["batch_stats"]["layer2_0"]["bn1"]["mean"],
                           variables["batch_stats"]["layer2_0"]["bn1"]["mean"])
    x = np.random.default_rng(0).normal(size=(16, 12, 12, 1)).astype(np.float32)
    np.testing.assert_allclose(module.apply(permuted, x), module.apply(variables, x), atol=1e-4, rtol=1e-4)


def test_alignment_to_a_reference_undoes_a_channel_permutation_exactly(fake_zoo):
    module, variables = _model(fake_zoo)
    reference = snapshots.load_variables(fake_zoo, 0, "final")
    permuted = tokens.permute_channels(variables, jax.random.key(1))
    aligned = tokens.align_channels(step_lib.stack([variables, permuted, reference]), reference)
    jax.tree_util.tree_map(lambda x: np.testing.assert_array_equal(x[0], x[1]), aligned)
    jax.tree_util.tree_map(np.testing.assert_array_equal, step_lib.unstack(aligned, 2), reference)
    x = np.random.default_rng(0).normal(size=(16, 12, 12, 1)).astype(np.float32)
    np.testing.assert_allclose(module.apply(step_lib.unstack(aligned, 0), x), module.apply(variables, x),
                               atol=1e-4, rtol=1e-4)


def test_tokens_hold_every_value_once_in_forward_order(fake_zoo):
    _, variables = _model(fake_zoo)
    layout = tokens.layout(variables, token_size=40)
    tok = np.asarray(tokens.tokenize(variables, 40))
    assert tok.shape == (layout.num_tokens, 40)
    assert layout.mask.sum() == sum(x.size for x in jax.tree_util.tree_leaves(variables))
    assert np.all(tok[layout.mask == 0] == 0)
    first = variables["params"]["conv1"]["kernel"][..., 0].reshape(-1)  # stem's channel 0 leads
    np.testing.assert_array_equal(tok[0, :first.size], first)
    assert layout.segment[0] == 0 and layout.segment[-1] == layout.num_segments - 1


def test_embedding_calls_take_64_small_networks_but_few_width_64_ones():
    assert sane_stage.networks_per_call(300) == 64     # a width-4 ResNet-18 at token_size 292
    assert sane_stage.networks_per_call(42_950) == 4   # width 64 at 288: 64 needed 89 GiB on an H100
    assert sane_stage.networks_per_call(10 ** 7) == 1


def test_without_a_position_table_sane_tells_tokens_apart_by_segment_and_channel(fake_zoo):
    """model.position_table=False drops one [num_tokens, dim] table from the encoder and the
    decoder; the (segment, channel) pairs it relies on name every token once."""
    _, variables = _model(fake_zoo)
    config = sane_configs.get_config("tiny")
    layout = tokens.layout(variables, config.tokens.token_size)
    assert len({(s, c) for s, c in zip(layout.segment, layout.channel)}) == layout.num_tokens
    window = config.tokens.window

    def count(position_table):
        config.model.position_table = position_table
        params = sane_stage.init_state(config, model_lib.build(config, layout), layout, window)[0].params
        return sum(x.size for x in jax.tree_util.tree_leaves(params))
    assert count(True) - count(False) == 2 * layout.num_tokens * config.model.dim


def test_tokens_detokenize_back_to_the_same_variables(fake_zoo):
    _, variables = _model(fake_zoo)
    for size in (40, 300):  # channels in several tokens, and every channel in one
        back = tokens.detokenize(tokens.tokenize(variables, size), variables)
        assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(variables)
        jax.tree_util.tree_map(np.testing.assert_array_equal, back, variables)


def test_tiny_stage_writes_embeddings_and_a_rerun_does_nothing(sane_workdir):
    out = sane.paths(sane_workdir)
    emb = sane.load_embeddings(sane_workdir)
    rows = snapshots.read_manifest(sane_workdir)
    assert emb["z"].shape == (len(rows), sane_configs.get_config("tiny").model.latent_dim)
    assert np.isfinite(emb["z"]).all()
    with open(out["metrics"]) as f:
        assert json.load(f)["selected_on"] == "val"
    stamp = os.path.getmtime(out["embeddings"])
    stages.run_stage(sane_configs.get_config("tiny"), sane_workdir)
    assert os.path.getmtime(out["embeddings"]) == stamp


def test_resume_from_the_last_checkpoint_gives_the_same_embeddings(sane_workdir, tmp_path):
    workdir = str(tmp_path / "work")
    shutil.copytree(sane_workdir, workdir)
    out = sane.paths(workdir)
    shutil.rmtree(out["params"])  # as if killed after the last training checkpoint
    os.remove(out["embeddings"])
    stages.run_stage(sane_configs.get_config("tiny"), workdir)
    np.testing.assert_allclose(sane.load_embeddings(workdir)["z"], sane.load_embeddings(sane_workdir)["z"],
                               atol=1e-5)


def test_embedding_of_a_channel_permuted_model_is_its_own(sane_workdir):
    """Inputs are aligned to the stage's reference network (tokens.align, the default), so a
    permuted model embeds where the model does, while distinct models stay apart."""
    codec = sane.load(sane_workdir)
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *[
        snapshots.load_variables(sane_workdir, m, "final") for m in range(12)])
    z = codec.embed(stacked)
    zp = codec.embed(jax.vmap(tokens.permute_channels)(stacked, jax.random.split(jax.random.key(0), 12)))
    np.testing.assert_allclose(zp, z, atol=1e-5)
    pair = np.linalg.norm(z[:, None] - z[None], axis=-1)
    assert pair[~np.eye(12, dtype=bool)].min() > 1e-3
    metrics = json.load(open(sane.paths(sane_workdir)["metrics"]))
    assert metrics["permutation"]["mean_moved"] < 1e-5


def test_segment_embeddings_and_reconstructions_read_by_the_benchmark(sane_workdir, monkeypatch):
    """Weighted by their token counts, the segments' means average to the whole network's mean;
    the benchmark's 'sane_segments' rows are each snapshot's segment embedding, its
    'sane_decoded' rows the weight statistics of each snapshot's reconstruction, both from one
    computation of each model's latents."""
    codec = sane.load(sane_workdir)
    rows = [r for r in snapshots.read_manifest(sane_workdir) if r["snapshot"] == "final"][:4]
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *[
        snapshots.load_variables(sane_workdir, r["model_id"], "final") for r in rows])
    counts = np.bincount(codec.layout.segment)
    per_segment = codec.segment_means(codec.latents(stacked)).reshape(len(rows), len(counts), -1)
    np.testing.assert_allclose((per_segment * counts[:, None]).sum(1) / counts.sum(), codec.embed(stacked),
                               atol=1e-5)
    assert np.ptp(per_segment, axis=1).min() > 1e-3  # the segments do not all say the same
    calls = []
    latents = sane_stage.Codec.latents
    monkeypatch.setattr(sane_stage.Codec, "latents", lambda self, x: calls.append(1) or latents(self, x))
    out = reps.load(sane_workdir, ["sane_segments", "sane_decoded"], rows)
    assert len(calls) == len(rows)  # one model per row: its latents once, for both
    np.testing.assert_allclose(out["sane_segments"], per_segment.reshape(len(rows), -1), atol=1e-5)
    # 'sane_decoded': the weight statistics of what SANE rebuilds, not of the networks themselves
    decoded = out["sane_decoded"]
    np.testing.assert_allclose(decoded, reps.weight_statistics(codec.decode(codec.latents(stacked))),
                               rtol=1e-4, atol=1e-5)
    assert decoded.shape == reps.weight_statistics(stacked).shape
    assert not np.allclose(decoded, reps.weight_statistics(stacked), atol=1e-3)


def test_sane_samples_decode_to_networks_around_the_nearest_sets_best_models(sane_workdir):
    rows = snapshots.read_manifest(sane_workdir)
    classes = rows[0]["classes"]
    picked = sane_sample.prompt_rows(rows, classes, 10, num_prompts=3)
    assert rows[picked[0]]["classes"] == rows[0]["classes"]  # its own set first (a train model)
    assert all(rows[i]["snapshot"] == "final" and rows[i]["split"] == "train" for i in picked)
    codec = sane.load(sane_workdir)
    prompts = step_lib.stack([snapshots.load_variables(sane_workdir, rows[i]["model_id"], "final")
                              for i in picked])
    z = codec.latents(prompts)
    assert z.shape == (3, codec.layout.num_tokens, sane_configs.get_config("tiny").model.latent_dim)
    np.testing.assert_allclose(z.mean(1), codec.embed(prompts), rtol=1e-5, atol=1e-6)
    same, pick = sane_sample.kde(z, 5, jax.random.key(0), bandwidth=0.0)  # no noise: the prompts
    np.testing.assert_array_equal(same, np.asarray(z)[pick])
    wide, _ = sane_sample.kde(z, 2000, jax.random.key(0), bandwidth=0.5)
    np.testing.assert_allclose(wide.std(0), np.sqrt(z.var(0) * (1 + 0.25)), rtol=0.15, atol=1e-3)
    drawn = sane_sample.sample(codec, prompts, 4, jax.random.key(1), bandwidth=0.5, residual=False)
    assert jax.tree_util.tree_structure(drawn) == jax.tree_util.tree_structure(prompts)
    assert all(np.isfinite(x).all() and x.shape[0] == 4 for x in jax.tree_util.tree_leaves(drawn))
    # residual: a draw at its prompt is the prompt, whatever the decoder gets wrong; one away from
    # it is the prompt moved by the decoder's difference between the two
    at_prompts = sane_sample.sample(codec, prompts, 4, jax.random.key(1), bandwidth=0.0)
    _, pick = sane_sample.kde(z, 4, jax.random.key(1), bandwidth=0.0)
    jax.tree_util.tree_map(lambda a, p: np.testing.assert_allclose(a, np.asarray(p)[pick], atol=1e-5),
                           at_prompts, prompts)
    moved = sane_sample.sample(codec, prompts, 4, jax.random.key(1), bandwidth=0.5)
    own = codec.decode(z)
    jax.tree_util.tree_map(lambda m, p, d, o: np.testing.assert_allclose(
        m, np.asarray(p)[pick] + d - np.asarray(o)[pick], atol=1e-5), moved, prompts, drawn, own)
    # decoding is the inverse of the token normalisation: a decoded network's BN variances and
    # kernels are on the zoo's scale, not the normalised one
    module, _ = _model(sane_workdir)
    x = np.random.default_rng(0).normal(size=(8, 12, 12, 1)).astype(np.float32)
    assert np.isfinite(module.apply(step_lib.unstack(drawn, 0), x)).all()
