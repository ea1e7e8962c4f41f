"""Representations of a zoo's snapshots: one feature row per manifest row.

    weight_stats   per leaf (every parameter and BatchNorm statistic): mean, std and the 0, 25,
                   50, 75 and 100 % quantiles of its values (Unterthiner et al. 2020)
    delta_stats    the same statistics of each network's difference to the zoo's reference (its
                   earliest train snapshot, under a shared init the init), after aligning its
                   channels to the reference as the sane stage does, and each leaf's distance to
                   it: how far, and how, training moved it
    pca            the first `num_components` principal directions of the pca stage's
                   coefficients (concatenated over parameters), fitted on the rows given
    ae             the ae stage's latent
    sane           the sane stage's embedding (mean over tokens of the encoder output)
    sane_segments  the same encoder's token latents averaged within each segment (layer x chunk
                   of its output channels) instead of over the whole network, segments side by
                   side: where in the network a latent sits, as the weight statistics keep
                   their leaves apart
    sane_decoded   the weight statistics of the SANE's reconstruction of each network (decode of
                   its token latents): what of the statistics survives SANE's bottleneck
    probe_outputs  what the network does on fixed probe inputs (Kahana et al. 2024, "Deep linear
                   probe generators for weight space learning": probing beat weight-space
                   encoders): the same unlabelled train images for every network, drawn over all
                   classes; per image its class probabilities sorted (output slots carry no
                   meaning across class sets), then over images the mean, std and quantiles of
                   the top probability, the margin and the entropy, and how the network spreads
                   the images over its slots (each slot's share of them, the mutual information
                   of image and slot); and how consistent its outputs are: how purely it gives
                   the probe images of one class of the data one slot, and how far its outputs
                   move when noise is added to the images. A functional representation: it
                   reads the weights through a forward pass; the network's own labels and
                   classes unused (the probe images' classes are the same for every network)
    sensitivity    label-free sharpness: how far the network's predictions on the probe images
                   move when every parameter moves by sigma x its own magnitude x fixed noise
                   (the same noise for every network), per sigma the KL divergence (mean and 90 %
                   quantile over images) and the share of argmaxes kept: the magnitude-aware
                   sharpness of Keskar et al. 2017 and Jiang et al. 2020, on the network's own
                   predictions instead of labels. Aimed at memorisation (the label-noise zoo)
"""
import importlib
import os

import jax
import numpy as np
from scipy.special import entr, log_softmax
from tqdm import tqdm

from wsjax.common import config as config_lib
from wsjax.common import contract
from wsjax.common.config import require
from wsjax.sane import tokens
from wsjax.zoo import snapshots

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
# Representations read from another stage: that stage and the output they come from (a file it
# writes them to, or its trained SANE, which the benchmark runs on the zoo).
OUTPUTS = {"pca": ("pca", "coeffs.npz"), "ae": ("ae", "latents.npz"), "sane": ("sane", "embeddings.npz"),
           "sane_segments": ("sane", "params"), "sane_decoded": ("sane", "params")}
NAMES = ("weight_stats", "delta_stats", "pca", "ae", "sane", "sane_segments", "sane_decoded", "probe_outputs",
         "sensitivity")
SENSITIVITY_SIGMAS = (0.05, 0.1, 0.2, 0.4)  # relative weight noise: barely to badly moved outputs
SENSITIVITY_DRAWS = 2


def weight_statistics(stacked):
    """[N, 7 x leaves] of stacked variables [N, ...]: per leaf mean, std and QUANTILES."""
    out = []
    for leaf in jax.tree_util.tree_leaves(stacked):
        x = np.asarray(leaf, np.float32).reshape(len(leaf), -1)
        out += [x.mean(1, keepdims=True), x.std(1, keepdims=True),
                np.quantile(x, QUANTILES, axis=1).T]
    return np.concatenate(out, axis=1)


def delta_statistics(stacked, reference):
    """[N, 8 x leaves] of stacked variables [N, ...] aligned to `reference` (one network):
    weight_statistics of their differences to it, then per leaf log(1 + L2 distance)."""
    delta = jax.tree_util.tree_map(lambda x, r: np.asarray(x, np.float32) - r[None],
                                   tokens.align_channels(stacked, reference), reference)
    distance = [np.log1p(np.linalg.norm(np.reshape(d, (len(d), -1)), axis=1))[:, None]
                for d in jax.tree_util.tree_leaves(delta)]
    return np.concatenate([weight_statistics(delta)] + distance, axis=1)


def slot_shares(prob):
    """[N, k] of probabilities [N, n, k]: the share of the n images whose argmax is each slot."""
    return (prob.argmax(-1)[..., None] == np.arange(prob.shape[-1])).mean(1)


def output_statistics(logits):
    """[N, n x k + 24 + 2k] of logits [N, n, k] (N networks on n probe images): probe_outputs."""
    logits = np.asarray(logits, np.float64)
    logp = log_softmax(logits, axis=-1)
    prob = np.exp(logp)
    p = -np.sort(-prob, axis=-1)  # per image, descending
    entropy = -(prob * logp).sum(-1)
    summary = []
    for v in (p[..., 0], p[..., 0] - p[..., 1], entropy):  # [N, n] each
        summary += [v.mean(1, keepdims=True), v.std(1, keepdims=True), np.quantile(v, QUANTILES, axis=1).T]
    # Across images, which per-image sorting cannot see: one slot taking every image and the
    # images split among the slots look alike image by image. Each slot's share of the argmax and
    # its mean probability (sorted), the entropy of the mean prediction, its excess over the mean
    # entropy (the mutual information of image and slot) and the logits' scale.
    marginal = prob.mean(1)
    marginal_entropy = entr(marginal).sum(1, keepdims=True)  # 0 log 0 = 0: a slot no image reaches
    scale = np.log(np.maximum((logits - logits.mean(-1, keepdims=True)).std((1, 2)), 1e-12))[:, None]
    spread = [np.sort(slot_shares(prob), 1), np.sort(marginal, 1), marginal_entropy,
              marginal_entropy - entropy.mean(1, keepdims=True), scale]
    return np.concatenate([p.reshape(len(p), -1)] + summary + spread, axis=1).astype(np.float32)


def consistency_statistics(logits, noisy_logits, classes):
    """[N, 2c + 4] of logits [N, n, k] on n probe images of `classes` [n] (c distinct) and on the
    same images with noise added (noisy_logits): per class of the data, the largest share of its
    images the network gives one slot and the entropy of its mean prediction on them, each
    sorted over classes, their mean purity; the share of images whose argmax the noise keeps,
    and the mean, median and 90 % quantile of the KL divergence it causes. Memorising wrong
    labels (label noise) makes both less consistent, without the labels being known."""
    logp, noisy_logp = (log_softmax(np.asarray(z, np.float64), axis=-1) for z in (logits, noisy_logits))
    prob = np.exp(logp)
    purity, entropy = [], []
    for c in np.unique(classes):
        of_c = prob[:, classes == c]
        purity.append(slot_shares(of_c).max(1))
        entropy.append(entr(of_c.mean(1)).sum(1))
    purity, entropy = np.sort(np.stack(purity, 1), 1), np.sort(np.stack(entropy, 1), 1)
    kept = (prob.argmax(-1) == noisy_logp.argmax(-1)).mean(1, keepdims=True)
    kl = (prob * (logp - noisy_logp)).sum(-1)
    return np.concatenate([purity, entropy, purity.mean(1, keepdims=True), kept, kl.mean(1, keepdims=True),
                           np.quantile(kl, (0.5, 0.9), axis=1).T], axis=1).astype(np.float32)


def probe_features(logits, noisy_logits, classes):
    """probe_outputs of logits [N, n, k] on probe_images and noisy_logits on their noisy copies."""
    consistency = consistency_statistics(logits, noisy_logits, classes)
    return np.concatenate([output_statistics(logits), consistency], axis=1)


def probe_images(dataset, num_images):
    """(images, their classes, images with noise): `num_images` train images, the same for any
    zoo on this data, the classes in turn, each its first images in dataset order; the noise
    normal, fixed, of half the images' std (enough to move an unstable network's outputs)."""
    per_class = [np.flatnonzero(dataset.y_train == c) for c in np.unique(dataset.y_train)]
    order = [i for column in zip(*per_class) for i in column]  # class 0, 1, ..., 0, 1, ...
    require(num_images <= len(order), f"probe_images={num_images} exceeds the {len(order)} probes "
            "this dataset's smallest class allows")
    images = dataset.x_train[np.asarray(order[:num_images])]
    noise = np.random.default_rng(0).normal(size=images.shape).astype(images.dtype)
    return images, dataset.y_train[np.asarray(order[:num_images])], images + 0.5 * images.std() * noise


def _once(memo, key, fn):
    """memo[key], computed by fn() the first time: what several representations of one model share."""
    if key not in memo:
        memo[key] = fn()
    return memo[key]


class _Probe:
    """The probe images of a zoo's data and each snapshot's logits on them, shared through a
    model's memo by probe_outputs and sensitivity (each model built with its own activation)."""

    def __init__(self, workdir, num_images):
        from wsjax import data, models
        zoo = config_lib.load(workdir, "zoo")
        self.images, self.classes, self.noisy = probe_images(data.load(zoo.data), num_images)
        self.module_of = models.builder(zoo.model, zoo.tasks.k)

    def logits(self, stacked, row, images):
        from wsjax.models import inference
        return inference.logits_stack(self.module_of(row["activation"]), stacked, images)

    def clean(self, stacked, row, memo):
        return _once(memo, "probe_logits", lambda: self.logits(stacked, row, self.images))

    def outputs(self, stacked, row, memo):
        """probe_features of the snapshots."""
        noisy = self.logits(stacked, row, self.noisy)
        return probe_features(self.clean(stacked, row, memo), noisy, self.classes)

    def sensitivity(self, stacked, row, memo):
        """sensitivity_features of the snapshots on the probe images."""
        rng = np.random.default_rng(0)  # the same noise for every network
        draw = lambda x: rng.standard_normal(x.shape[1:], np.float32)  # noqa: E731
        noise = [jax.tree_util.tree_map(draw, stacked["params"]) for _ in range(SENSITIVITY_DRAWS)]
        moved = [[self.logits(dict(stacked, params=perturbed(stacked["params"], s, e)), row, self.images)
                  for e in noise] for s in SENSITIVITY_SIGMAS]
        return sensitivity_features(self.clean(stacked, row, memo), np.asarray(moved))


def sensitivity_features(logits, perturbed):
    """[N, 3 S]: per sigma, the KL divergence of a network's predictions from its perturbed
    copies' (averaged over draws; mean and 90 % quantile over images) and the share of argmaxes
    kept. logits [N, n, k]; perturbed [S sigmas, D draws, N, n, k]."""
    logp = log_softmax(logits, -1)
    prob = np.exp(logp)
    out = []
    for per_sigma in log_softmax(perturbed, -1):
        kl = (prob * (logp - per_sigma)).sum(-1).mean(0)  # [N, n]
        kept = (prob.argmax(-1) == per_sigma.argmax(-1)).mean((0, 2))
        out += [kl.mean(1), np.quantile(kl, 0.9, axis=1), kept]
    return np.stack(out, 1).astype(np.float32)


def perturbed(params, sigma, noise):
    """Stacked `params` with each value moved by sigma x its magnitude x `noise` (one network's
    shapes, the same for every network of the stack)."""
    return jax.tree_util.tree_map(lambda x, e: x + sigma * np.abs(x) * e, params, noise)


def reference_network(workdir, rows):
    """The earliest train snapshot among manifest `rows` (the first by step, then row order):
    the sane stage's alignment reference; under a shared init, the init."""
    first = min((r for r in rows if r["split"] == "train"), key=lambda r: r["step"])
    index = snapshots.snapshot_index(snapshots.read_manifest(workdir))
    j = index[(first["model_id"], first["snapshot"])]
    return jax.tree_util.tree_map(lambda x: np.asarray(x[j]),
                                  snapshots.load_snapshots(workdir, first["model_id"]))


def zoo_statistics(workdir, rows, statistics, desc=None):
    """statistics(stacked, row) of every snapshot of `rows` (manifest rows), in their order: [n, F]
    per model gives [N, F], a dict of them a dict; read one model's snapshots at a time (`row`:
    the model's first among `rows`). `desc`: a progress bar over the models with this label."""
    index = snapshots.snapshot_index(snapshots.read_manifest(workdir))
    by_model = {}
    for i, r in enumerate(rows):
        by_model.setdefault(r["model_id"], []).append((i, index[(r["model_id"], r["snapshot"])]))
    out = None
    for model_id, pairs in tqdm(by_model.items(), desc=desc, unit="model", leave=False, disable=desc is None):
        stats = statistics(snapshots.load_snapshots(workdir, model_id), rows[pairs[0][0]])
        if out is None:
            out = jax.tree_util.tree_map(lambda x: np.empty((len(rows), x.shape[1]), x.dtype), stats)
        for i, j in pairs:
            jax.tree_util.tree_map(lambda o, x: o.__setitem__(i, x[j]), out, stats)
    return out


def _aligned(table, rows, source):
    """table['z'|'coeffs'] rows reordered to match manifest `rows` by (model_id, snapshot)."""
    key = "z" if "z" in table else "coeffs"
    position = {(int(m), str(s)): i for i, (m, s) in enumerate(zip(table["model_id"], table["snapshot"]))}
    missing = [(r["model_id"], r["snapshot"]) for r in rows if (r["model_id"], r["snapshot"]) not in position]
    require(not missing, f"{source} lacks snapshots {missing[:3]} of the zoo's manifest: rerun that stage")
    return np.asarray(table[key][[position[(r["model_id"], r["snapshot"])] for r in rows]], np.float32)


def pca_projection(coeffs, fit_idx, num_components):
    """coeffs [N, K] projected on the top `num_components` principal directions of coeffs[fit_idx]."""
    mean = coeffs[fit_idx].mean(0)
    _, _, vt = np.linalg.svd(coeffs[fit_idx] - mean, full_matrices=False)
    return (coeffs - mean) @ vt[:num_components].T


def available(workdir, names):
    """The representations of `names` ('a+b': each part) whose stages have finished in `workdir`
    (those computed from the zoo's snapshots, not in OUTPUTS, always)."""
    return [n for n in names if all(p not in OUTPUTS or os.path.exists(os.path.join(workdir, *OUTPUTS[p]))
                                    for p in n.split("+"))]


def _from_snapshots(workdir, names, rows, num_images):
    """{name: statistics(stacked, row, memo)} of the representations of `names` computed from the
    zoo's snapshots (memo: one model's shared intermediates, the SANE's latents, the probe logits)."""
    out = {}
    if "weight_stats" in names:
        out["weight_stats"] = lambda stacked, row, memo: weight_statistics(stacked)
    if "delta_stats" in names:
        reference = reference_network(workdir, rows)
        out["delta_stats"] = lambda stacked, row, memo: delta_statistics(stacked, reference)
    if {"probe_outputs", "sensitivity"} & set(names):
        probe = _Probe(workdir, num_images)
        out.update({n: f for n, f in (("probe_outputs", probe.outputs), ("sensitivity", probe.sensitivity))
                    if n in names})
    if {"sane_segments", "sane_decoded"} & set(names):
        from wsjax import sane
        contract.current(workdir, "sane")  # trained on the zoo that is there now
        codec = sane.load(workdir)
        latents = lambda stacked, memo: _once(memo, "sane_latents", lambda: codec.latents(stacked))  # noqa: E731
        if "sane_segments" in names:
            out["sane_segments"] = lambda stacked, row, memo: codec.segment_means(latents(stacked, memo))
        if "sane_decoded" in names:
            out["sane_decoded"] = lambda stacked, row, memo: weight_statistics(
                codec.decode(latents(stacked, memo)))
    return out


def load(workdir, names, rows, probe_images=128):
    """{name: raw features [N, F]} of the representations `names` for manifest `rows` (pca: all
    coefficients; the projection is fitted per split by the caller). Those computed from the
    zoo's snapshots come from one pass over it: each model read once, what two of them share
    (the SANE's latents, the logits on the probe images) computed once."""
    unknown = [n for n in names if n not in NAMES]
    require(not unknown, f"unknown representations {unknown}: use names of {NAMES}")
    out = {}
    readers = {"pca": "load_coeffs", "ae": "load_latents", "sane": "load_embeddings"}  # stage files
    for name in [n for n in names if n in readers]:
        contract.current(workdir, OUTPUTS[name][0])  # built from the zoo that is there now
        table = getattr(importlib.import_module(f"wsjax.{name}"), readers[name])(workdir)
        out[name] = _aligned(table, rows, os.path.join(workdir, *OUTPUTS[name]))
    features = _from_snapshots(workdir, names, rows, probe_images)

    def statistics(stacked, row):
        memo = {}  # what this model's representations share
        return {n: f(stacked, row, memo) for n, f in features.items()}
    if features:
        out.update(zoo_statistics(workdir, rows, statistics, desc="representations: " + ", ".join(features)))
    return {n: out[n] for n in names}
