"""Stage 'pca': per-named-parameter PCA of the zoo, streamed one block of leaves at a time.

    pca/blocks/plan.json           the block plan and fit settings (a rerun must match them)
    pca/blocks/block_<i>.npz       one finished block: per-leaf mean, basis, coefficients, energies
    pca/state/                     Orbax {'mean': tree, 'basis': tree} (`pca.load`)
    pca/meta.json                  segments, shapes, var_floor
    pca/coeffs.npz                 coefficients of every zoo snapshot, manifest order (`pca.load_coeffs`)
    pca/summary.json               per parameter: mode, dim, num_components, explained variance,
                                   held-out energy
    pca/explained_variance.png

Only the leaves of one block are in memory at a time; a killed run resumes at the first missing
block. Fitted on status 'ok' snapshots (early and final) of the train split only.
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from wsjax.common import config as config_lib
from wsjax.common import io
from wsjax.common import checkpoints
from wsjax.common.config import require
from wsjax.pca import fit as fit_lib
from wsjax.zoo import snapshots

STAGE = "pca"
# Settings a finished block depends on: a rerun with other values must not mix blocks.
_FIT_FIELDS = ("var_threshold", "dim_limit", "explained_variance", "max_components", "solver",
               "oversample", "power_iters", "block_bytes")


def check_config(config):
    """One clear error per bad field, before any work."""
    require("pca" in config, "config.pca is missing: use configs/pca.py")
    c = config.pca
    require(c.var_threshold >= 0, f"config.pca.var_threshold must be >= 0, got {c.var_threshold}")
    require(c.dim_limit >= 0, f"config.pca.dim_limit must be >= 0, got {c.dim_limit}")
    require(0 < c.explained_variance <= 1,
            f"config.pca.explained_variance must be in (0, 1], got {c.explained_variance}")
    require(c.max_components >= 1, f"config.pca.max_components must be >= 1, got {c.max_components}")
    require(c.solver in ("auto", "rsvd", "gram"),
            f"config.pca.solver must be 'auto', 'rsvd' or 'gram', got {c.solver!r}")
    require(c.oversample >= 0, f"config.pca.oversample must be >= 0, got {c.oversample}")
    require(c.power_iters >= 0, f"config.pca.power_iters must be >= 0, got {c.power_iters}")
    require(c.block_bytes > 0, f"config.pca.block_bytes must be > 0, got {c.block_bytes}")
    require(c.var_floor >= 0, f"config.pca.var_floor must be >= 0, got {c.var_floor}")


def plan_blocks(shapes, num_rows, block_bytes):
    """Lists of leaf names, same-shaped leaves adjacent (vmapped together), each block's
    [num_rows, d] float32 data <= block_bytes (a leaf larger than that is a block of its own)."""
    order = sorted(shapes, key=lambda ns: (int(np.prod(ns[1])), ns[1]))
    blocks, current, used = [], [], 0
    for name, shape in order:
        size = 4 * num_rows * int(np.prod(shape))
        if current and used + size > block_bytes:
            blocks.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    if current:
        blocks.append(current)
    return blocks


def read_leaves(workdir, rows, names, shapes, desc=None):
    """{name: [len(rows), d] float32} of the zoo snapshots `rows`, restoring only `names` from
    each model's stacked checkpoint."""
    item = fit_lib.nest({n: 0 for n in names})
    out = {n: np.empty((len(rows), int(np.prod(shapes[n]))), np.float32) for n in names}
    index = snapshots.snapshot_index(snapshots.read_manifest(workdir))
    by_model = {}
    for i, r in enumerate(rows):
        by_model.setdefault(r["model_id"], []).append((i, index[(r["model_id"], r["snapshot"])]))
    for model_id, picks in tqdm(by_model.items(), desc=desc or "reading snapshots", unit="model",
                                leave=False, disable=desc is None and len(by_model) < 100):
        path = snapshots.snapshot_path(workdir, model_id)
        flat = fit_lib.flatten(checkpoints.restore_subtree(path, item, stage="zoo"))
        for n in names:
            require(n in flat and np.shape(flat[n])[1:] == tuple(shapes[n]),
                    f"snapshot {path} has no leaf {n} of shape {tuple(shapes[n])}")
            for i, j in picks:
                out[n][i] = np.asarray(flat[n][j], np.float32).reshape(-1)
    return out


def fit_block(data, train, pca_cfg, keys):
    """Fits the leaves in `data` ({name: [S, d]}) on rows `train` ([S] bool); returns per-leaf
    fits and, per leaf, coefficients [S, k], energy about the mean [S] and residual energy [S]."""
    fits = fit_lib.fit_leaves({n: x[train] for n, x in data.items()}, pca_cfg, keys)
    out = {}
    for n, x in data.items():
        coeffs, recon = fit_lib.project(fits[n], x)
        out[n] = dict(coeffs=np.asarray(coeffs, np.float32),
                      energy=((x - fits[n].mean) ** 2).sum(1),
                      resid=((x - recon) ** 2).sum(1))
    return fits, out


def leaf_keys(seed, names_in_order):
    base = jax.random.key(seed)
    return {n: jax.random.fold_in(base, i) for i, n in enumerate(names_in_order)}


def _save_block(path, names, fits, out):
    arrays = {"names": np.asarray(names)}
    for j, n in enumerate(names):
        f = fits[n]
        arrays.update({f"{j}_mode": np.asarray(f.mode), f"{j}_mean": f.mean, f"{j}_basis": f.basis,
                       f"{j}_variance": np.asarray(f.variance), f"{j}_explained": f.explained,
                       **{f"{j}_{key}": v for key, v in out[n].items()}})
    io.savez(path, **arrays)  # atomic: a block file exists only when complete


def _load_block(path):
    z = np.load(path)
    fits, out = {}, {}
    for j, n in enumerate(z["names"].tolist()):
        fits[n] = fit_lib.LeafFit(n, str(z[f"{j}_mode"]), z[f"{j}_mean"], z[f"{j}_basis"],
                                  float(z[f"{j}_variance"]), z[f"{j}_explained"])
        out[n] = {key: z[f"{j}_{key}"] for key in ("coeffs", "energy", "resid")}
    return fits, out


def paths(workdir):
    d = os.path.join(workdir, STAGE)
    return dict(dir=d, state=os.path.join(d, "state"), meta=os.path.join(d, "meta.json"),
                coeffs=os.path.join(d, "coeffs.npz"), plot=os.path.join(d, "explained_variance.png"),
                summary=os.path.join(d, "summary.json"), blocks=os.path.join(d, "blocks"))


def _complete(workdir):
    p = paths(workdir)
    return checkpoints.exists(p["state"]) and all(
        os.path.exists(p[f]) for f in ("meta", "coeffs", "plot", "summary"))


def run(config, workdir):
    check_config(config)
    out_dir, out = config_lib.stage_dir(workdir, STAGE), paths(workdir)
    if _complete(workdir):
        logging.info("pca: outputs in %s are complete, nothing to do", out_dir)
        return load(workdir)
    start = time.time()
    rows = snapshots.read_manifest(workdir)
    train = np.array([r["split"] == "train" and r["status"] == "ok" for r in rows])
    require(train.sum() >= 2, f"{snapshots.zoo_dir(workdir)}/models.csv has {int(train.sum())} "
            "train-split snapshots with status 'ok': the PCA needs at least 2")
    snapshots.check_snapshots(workdir, rows)  # now, not after most of the work
    first = rows[int(np.argmax(train))]
    template = snapshots.load_variables(workdir, first["model_id"], first["snapshot"])
    shapes = fit_lib.leaf_names(template)
    names = [n for n, _ in shapes]
    shape_of = dict(shapes)
    blocks = plan_blocks(shapes, len(rows), config.pca.block_bytes)

    block_dir = out["blocks"]
    os.makedirs(block_dir, exist_ok=True)
    plan = dict(settings={k: config.pca[k] for k in _FIT_FIELDS}, seed=config.seed,
                snapshots=[f"{r['model_id']}_{r['snapshot']}" for r in rows], blocks=blocks)
    plan_path = os.path.join(block_dir, "plan.json")
    if os.path.exists(plan_path):
        with open(plan_path) as f:
            old = json.load(f)
        require(old == json.loads(json.dumps(plan)),
                f"{block_dir} holds blocks fitted with other settings or another zoo: "
                "delete it (or use another --workdir) to refit")
    else:
        io.write_json(plan_path, plan)

    keys = leaf_keys(config.seed, names)
    fits, leaves = {}, {}
    bar = tqdm(total=len(names), desc="pca parameters", unit="param")
    for i, block in enumerate(blocks):
        path = os.path.join(block_dir, f"block_{i:04d}.npz")
        if not os.path.exists(path):
            data = read_leaves(workdir, rows, block, shape_of, desc=f"block {i + 1}/{len(blocks)}")
            f, o = fit_block(data, train, config.pca, {n: keys[n] for n in block})
            _save_block(path, block, f, o)
        f, o = _load_block(path)
        fits.update(f)
        leaves.update(o)
        bar.update(len(block))
    bar.close()

    p = fit_lib.build(fits, shapes, config.pca.var_floor)
    coeffs = np.concatenate([leaves[n]["coeffs"] for n in names], axis=1).astype(np.float32)
    assert coeffs.shape == (len(rows), p.num_coeffs)
    save(workdir, p)
    io.savez(out["coeffs"], coeffs=coeffs,
             model_id=np.array([r["model_id"] for r in rows]),
             snapshot=np.array([r["snapshot"] for r in rows]),
             split=np.array([r["split"] for r in rows]),
             status=np.array([r["status"] for r in rows]))
    summary = summarize(p, fits, leaves, rows, train, time.time() - start)
    plot(out["plot"], p, fits)
    io.write_json(out["summary"], summary)
    t = summary["totals"]
    logging.info("pca: K=%d coefficients for %d weights; train energy %.4f, held-out energy in "
                 "span %.4f; %.1f s", t["num_coeffs"], t["dim"], t["train_energy"],
                 t["heldout_energy"], t["seconds"])
    return p


def summarize(p, fits, out, rows, train, seconds):
    heldout = np.array([r["split"] in ("val", "test") and r["status"] == "ok" for r in rows])

    def captured(n, mask):
        e = out[n]["energy"][mask].sum()
        return None if not mask.any() or e == 0 else float(1 - out[n]["resid"][mask].sum() / e)

    params = {}
    for name, start, stop, mode in p.segments:
        f = fits[name]
        params[name] = dict(
            mode=mode, dim=int(f.mean.shape[0]), num_components=stop - start, variance=f.variance,
            explained_variance=(float(f.explained[stop - start - 1]) if mode == "pca"
                                else 1.0 if mode == "centred" else 0.0),
            heldout_energy=captured(name, heldout))
    total = lambda key, mask: float(sum(out[n][key][mask].sum() for n in out))  # noqa: E731
    e_ho = total("energy", heldout)
    return dict(
        params=params,
        totals=dict(
            num_coeffs=p.num_coeffs, dim=int(sum(v["dim"] for v in params.values())),
            modes={m: sum(v["mode"] == m for v in params.values()) for m in fit_lib.MODES},
            train_snapshots=int(train.sum()), heldout_snapshots=int(heldout.sum()),
            train_energy=1 - total("resid", train) / max(total("energy", train), 1e-30),
            heldout_energy=(1 - total("resid", heldout) / e_ho) if e_ho > 0 else None,
            # BN running variances dominate the energy about the mean: report the rest apart.
            heldout_energy_params=_share(out, heldout, lambda n: n.startswith("params/")),
            heldout_energy_pca_leaves=_share(out, heldout, lambda n: fits[n].mode == "pca"),
            seconds=seconds))


def _share(out, mask, keep):
    """Energy captured over the leaves `keep` selects (None if they hold none)."""
    e = sum(float(out[n]["energy"][mask].sum()) for n in out if keep(n))
    r = sum(float(out[n]["resid"][mask].sum()) for n in out if keep(n))
    return 1 - r / e if e > 0 else None


def plot(path, p, fits):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, _, _, mode in p.segments:
        if mode == "pca":
            ax1.plot(np.arange(1, len(fits[name].explained) + 1), fits[name].explained, lw=0.8)
    ax1.set(xlabel="components", ylabel="cumulative explained variance (train)",
            title="PCA leaves", xscale="log")
    ks = [stop - start for _, start, stop, _ in p.segments]
    colors = {"mean": "0.6", "centred": "tab:orange", "pca": "tab:blue"}
    ax2.bar(range(len(ks)), ks, color=[colors[m] for *_, m in p.segments])
    ax2.set(xlabel="named parameter (flatten order)", ylabel="coefficients",
            title=f"K = {p.num_coeffs} (blue pca, orange centred, grey mean)", yscale="log")
    fig.tight_layout()
    io.savefig(fig, path, dpi=110)
    plt.close(fig)


def save(workdir, p):
    """Orbax state plus meta.json; the state directory is written by atomic rename."""
    out = paths(workdir)
    checkpoints.save(out["state"],
                     {"mean": fit_lib.nest(p.mean), "basis": fit_lib.nest(p.basis) or {"_": np.zeros(0)}})
    meta = dict(segments=[list(s) for s in p.segments],
                shapes=[[n, list(s)] for n, s in p.shapes], var_floor=p.var_floor)
    io.write_json(out["meta"], meta)


def load(workdir):
    """The fitted PCA of `workdir/pca` (jnp arrays)."""
    out = paths(workdir)
    meta_path = out["meta"]
    require(os.path.exists(meta_path), f"{meta_path} not found: run the 'pca' stage with this "
            "--workdir first")
    with open(meta_path) as f:
        meta = json.load(f)
    state = checkpoints.restore(out["state"], stage=STAGE)
    segments = tuple((n, int(a), int(b), m) for n, a, b, m in meta["segments"])
    mean, basis = fit_lib.flatten(state["mean"]), fit_lib.flatten(state["basis"])
    basis = {n: basis[n] for n, _, _, m in segments if m == "pca"}
    return fit_lib.PCA(mean={n: jnp.asarray(x) for n, x in mean.items()},
                       basis={n: jnp.asarray(x) for n, x in basis.items()},
                       segments=segments, shapes=tuple((n, tuple(s)) for n, s in meta["shapes"]),
                       var_floor=float(meta["var_floor"]))


def load_coeffs(workdir):
    """dict(coeffs [S, K] float32, model_id [S], snapshot [S], split [S], status [S])."""
    path = paths(workdir)["coeffs"]
    require(os.path.exists(path), f"{path} not found: run the 'pca' stage with this --workdir first")
    z = np.load(path)
    return {k: z[k] for k in ("coeffs", "model_id", "snapshot", "split", "status")}
