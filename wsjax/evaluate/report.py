"""The evaluate stage's plots and markdown report."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from wsjax.zoo import store  # noqa: E402


def cosine_heatmap(gen, workdir, size, path=None):
    """Cosine of z_proj (from each held-out snapshot's task and result) vs its z_weight
    (the thesis's Figure 4.3); saves heatmap.png, returns diagonal mean and top-1 among them."""
    latents = np.load(os.path.join(workdir, "ae", "latents.npz"))
    rows = {(r["model_id"], r["snapshot"]): r for r in store.read_manifest(workdir)}
    pick = [i for i, s in enumerate(latents["split"]) if s != "train"][:size]
    picked = [rows[(int(latents["model_id"][i]), str(latents["snapshot"][i]))] for i in pick]
    z_proj = np.asarray(gen.latents([r["classes"] for r in picked], [r["val_loss"] for r in picked],
                                    [r["val_accuracy"] for r in picked]))
    z_w = latents["z"][pick]
    unit = lambda z: z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12)  # noqa: E731
    cos = unit(z_proj) @ unit(z_w).T
    labels = [f"{r['model_id']}{r['snapshot'][0]}" for r in picked]
    fig, ax = plt.subplots(figsize=(5, 4.2))
    im = ax.imshow(cos, cmap="coolwarm", vmin=-1, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("z_weight (model id, e=early f=final)")
    ax.set_ylabel("z_proj from (dataset, result)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path or os.path.join(workdir, "evaluate", "heatmap.png"), dpi=120)
    plt.close(fig)
    return dict(diagonal_mean=float(np.mean(np.diag(cos))),
                off_diagonal_mean=float((cos.sum() - np.trace(cos)) / max(1, cos.size - len(cos))),
                top1=float(np.mean(cos.argmax(1) == np.arange(len(cos)))))


def _scatter(ax, records, key, title):
    for kind, marker in (("train", "o"), ("held_out", "^")):
        rs = [r for r in records if r["kind"] == kind]
        if not rs:
            continue
        t = [r[f"target_{key}"] for r in rs]
        ax.scatter(t, [r[key] for r in rs], marker=marker, label=f"sampled ({kind})", alpha=0.8)
        ax.scatter(t, [r[f"copy_{key}"] for r in rs], marker=marker, color="grey", alpha=0.4,
                   label=f"copy baseline ({kind})")
    lo = min(min(r[f"target_{key}"], r[key]) for r in records)
    hi = max(max(r[f"target_{key}"], r[key]) for r in records)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel(f"requested {key}")
    ax.set_ylabel(f"achieved {key}")
    ax.set_title(title)


def write(out_dir, results, records):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    _scatter(axes[0], records, "loss", "validation loss")
    _scatter(axes[1], records, "accuracy", "validation accuracy")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "target_vs_achieved.png"), dpi=120)
    plt.close(fig)

    lines = ["# wsjax evaluation report", "",
             "Sampled networks vs the requested result, on class sets the zoo trained on ('train') "
             "and on held-out class sets no zoo model ever saw ('held_out'). Baselines: copy = the "
             "zoo snapshot of the nearest task by dataset embedding with the nearest val loss; "
             "mean = the zoo's mean model; random = the zoo's init. All BN-recalibrated alike.", "",
             "| tasks | n | R² loss | R² acc | copy R² loss | accuracy | copy | mean model | random init "
             "| best / zoo median | agreement with nearest zoo model |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind in ("train", "held_out"):
        if kind in results:
            r = results[kind]
            lines.append(
                f"| {kind} | {r['num_samples']} | {r['r2_loss']:.3f} | {r['r2_accuracy']:.3f} | "
                f"{r['copy_r2_loss']:.3f} | {r['accuracy']:.3f} | {r['copy_accuracy']:.3f} | "
                f"{r['mean_model_accuracy']:.3f} | {r['random_init_accuracy']:.3f} | "
                f"{r['best_accuracy_vs_zoo_median']:.3f} | {r['memorisation_agreement']:.3f} |")
    heat = results["heatmap_diagonal_mean"]
    lines += ["", "![requested vs achieved](target_vs_achieved.png)", "",
              f"z_proj vs z_weight on held-out snapshots: diagonal cosine {heat['diagonal_mean']:.3f}, "
              f"off-diagonal {heat['off_diagonal_mean']:.3f}, top-1 {heat['top1']:.3f}.", "",
              "![cosine heatmap](heatmap.png)", ""]
    if "align" in results:
        lines += ["Alignment (align/metrics.json): " + ", ".join(
            f"{k} {v:.3f}" for k, v in results["align"].items() if isinstance(v, (int, float))), ""]
    if os.path.exists(os.path.join(os.path.dirname(out_dir), "ae", "report.md")):
        lines += ["Reconstruction of held-out models: see ../ae/report.md.", ""]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(lines))


def one_line(results):
    parts = []
    for kind in ("train", "held_out"):
        if kind in results:
            r = results[kind]
            parts.append(f"{kind}: R² loss {r['r2_loss']:.2f} (copy {r['copy_r2_loss']:.2f}), "
                         f"acc {r['accuracy']:.3f} (copy {r['copy_accuracy']:.3f}, mean "
                         f"{r['mean_model_accuracy']:.3f}), best/zoo median {r['best_accuracy_vs_zoo_median']:.2f}")
    return "evaluate: " + "; ".join(parts)
