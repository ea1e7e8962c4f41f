"""The evaluate stage's plots and markdown report."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from wsjax.common import io  # noqa: E402

KINDS = {"held_out": "held-out class sets (no zoo model saw them)",
         "train": "class sets of held-out models (train models saw them)"}


def _alignment_plot(path, records, samplers):
    kinds = [k for k in KINDS if any(r["kind"] == k for r in records)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 4.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for s in ("best",) + tuple(samplers) + ("copy",):
            rs = [r for r in records if r["kind"] == kind and r["sampler"] == s]
            ax.scatter([r["target_loss"] for r in rs], [r["loss"] for r in rs], s=12, alpha=0.7,
                       label=s, color="grey" if s == "copy" else None, marker="x" if s == "copy" else "o")
        lo = min(r["target_loss"] for r in records)
        hi = max(r["target_loss"] for r in records)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set(xscale="log", yscale="log", xlabel="requested val loss", ylabel="achieved val loss",
               title=KINDS[kind])
        ax.legend(fontsize=7)
    fig.tight_layout()
    io.savefig(fig, path, dpi=120)
    plt.close(fig)


def _finetune_plot(path, at_median, epochs):
    med = [m for m in at_median if "finetune" in m]
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for name in med[0]["finetune"]:
        acc = np.array([m["finetune"][name] for m in med])
        ax.errorbar(epochs, acc.mean(0), yerr=acc.std(0), marker="o", capsize=3, label=name)
    ax.set(xlabel="epochs of fine-tuning", ylabel="val accuracy",
           title=f"held-out class sets (n={len(med)}), mean ± std")
    ax.legend()
    fig.tight_layout()
    io.savefig(fig, path, dpi=120)
    plt.close(fig)


def _fmt(v):
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def write(out_dir, results, records, at_median, config):
    _alignment_plot(os.path.join(out_dir, "target_vs_achieved.png"), records, config.samplers)
    lines = ["# wsjax evaluation report", "",
             f"Requested val losses: {len(results['targets'])} quantiles of the train zoo's snapshot "
             f"losses ({results['targets'][0]:.3f} to {results['targets'][-1]:.3f}). 'best' keeps, per "
             "request, the candidate (predicted path + flow samples) whose loss on the task's train "
             "images is nearest; every score is on val images; every network is BN-recalibrated on "
             "the task's train images. 'copy' = the train snapshot of the nearest class set (class "
             "slots) with the nearest val loss.", "",
             "## Prompt alignment: requested vs achieved val loss", "",
             "| class sets | sampler | R² | Spearman ρ | mean accuracy |", "|---|---|---|---|---|"]
    for kind in KINDS:
        for s, a in results.get(kind, {}).get("samplers", {}).items():
            lines.append(f"| {kind} | {s} | {a['r2_loss']:.3f} | {a['spearman_loss']:.3f} | "
                         f"{a['accuracy']:.3f} |")
    lines += ["", "![requested vs achieved](target_vs_achieved.png)", "",
              f"## At the zoo's median final loss ({results['median_final_loss']:.3f})", "",
              "| class sets | n | sample ('best') | copy | copy + noise (sample's distance) | mean model "
              "| random init | agreement with nearest train snapshot |", "|---|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        if kind in results:
            r = results[kind]
            lines.append(f"| {kind} | {r['num_class_sets']} | " + " | ".join(_fmt(r.get(k, "—")) for k in (
                "accuracy", "copy_accuracy", "copy_noise_accuracy", "mean_model_accuracy",
                "shared_init_accuracy", "novelty_agreement")) + " |")
    lines += ["", f"Two train models of the same class set agree on "
              f"{results['same_class_set_agreement']:.3f} of val images (the novelty reference).", ""]
    if "finetune" in results.get("held_out", {}):
        _finetune_plot(os.path.join(out_dir, "finetune.png"), at_median, config.finetune.epochs)
        lines += ["## Fine-tuning on held-out class sets", "",
                  "| start | " + " | ".join(f"{e} epochs" for e in config.finetune.epochs) + " |",
                  "|---|" + "---|" * len(config.finetune.epochs)]
        for name, acc in results["held_out"]["finetune"].items():
            lines.append(f"| {name} | " + " | ".join(f"{a:.3f}" for a in acc) + " |")
        lines += ["", "![fine-tuning](finetune.png)", ""]
    if "generator" in results:
        lines += ["Generator (generator/metrics.json): " + ", ".join(
            f"{k} {_fmt(v)}" for k, v in results["generator"].items()), ""]
    io.write_text(os.path.join(out_dir, "report.md"), "\n".join(lines))


def one_line(results):
    parts = []
    for kind in KINDS:
        if kind in results:
            r = results[kind]
            parts.append(f"{kind}: R² loss {r['r2_loss']:.2f} (no selection {r['r2_loss_no_selection']:.2f}, "
                         f"copy {r['copy_r2_loss']:.2f}), acc at median {r['accuracy']:.3f} "
                         f"(copy {r['copy_accuracy']:.3f})")
    return "evaluate: " + "; ".join(parts)
