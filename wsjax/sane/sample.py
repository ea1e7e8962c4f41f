"""SANE sampling (seed 004): new networks for a class set, drawn from a kernel density estimate
over the per-token latents of prompt models (the zoo's best models of the nearest class sets),
decoded (by default as residuals on their prompts), BN-recalibrated and ranked by their loss on
the task's train images."""
import jax
import numpy as np

from wsjax.common.config import require
from wsjax.generator import features


def prompt_rows(rows, classes, num_classes, num_prompts):
    """Indices into `rows` of the `num_prompts` final train snapshots whose class sets are
    nearest `classes` (class-slot features, as the copy baseline), lowest val loss first among
    equally near ones."""
    final = [i for i, r in enumerate(rows) if r["split"] == "train" and r["snapshot"] == "final"]
    require(len(final) >= num_prompts, f"SANE sampling needs {num_prompts} final train snapshots, "
            f"the zoo has {len(final)}")
    query = features.class_features(classes, num_classes)
    dist = [np.linalg.norm(features.class_features(rows[i]["classes"], num_classes) - query) for i in final]
    order = sorted(range(len(final)), key=lambda j: (round(float(dist[j]), 6), rows[final[j]]["val_loss"]))
    return [final[j] for j in order[:num_prompts]]


def kde(latents, num, key, bandwidth):
    """(draws [num, T, d], the prompt each is drawn around [num]) from a Gaussian KDE over prompt
    latents [P, T, d]: a uniformly chosen prompt plus noise of `bandwidth` times the prompts' std
    per latent entry."""
    latents = np.asarray(latents, np.float32)
    require(len(latents) >= 2, "a KDE over prompts needs >= 2 prompts")
    k_pick, k_noise = jax.random.split(key)
    pick = np.asarray(jax.random.randint(k_pick, (num,), 0, len(latents)))
    noise = np.asarray(jax.random.normal(k_noise, (num,) + latents.shape[1:]))
    return latents[pick] + bandwidth * latents.std(0) * noise, pick


def sample(codec, prompts, num, key, bandwidth, residual=True):
    """Stacked variables [num, ...]: KDE draws around the stacked `prompts` [P, ...], decoded.
    residual: each draw's decoding minus its prompt's own, added to the prompt: what the decoder
    gets wrong on both cancels, so a draw at its prompt is the prompt (the plain decoding of a
    zoo network loses much of its function; README, SANE sampling)."""
    z = codec.latents(prompts)
    draws, pick = kde(z, num, key, bandwidth)
    decoded = codec.decode(draws)
    if not residual:
        return decoded
    own = codec.decode(z)
    return jax.tree_util.tree_map(lambda p, d, o: np.asarray(p)[pick] + np.asarray(d) - np.asarray(o)[pick],
                                  prompts, decoded, own)
