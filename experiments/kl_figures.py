"""Figures of the KL question (experiments/vae_kl_sweeps.py): a sweep's measurements against the
swept value, the rate-distortion plane, the encoder's std over training."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from jaxgen.workdir import write_atomically

matplotlib.use("Agg")  # files only: no display is needed or opened

# (title, [(column, legend)], y scale) of each panel of a sweep figure.
SWEEP_PANELS = [
    ("rate and I(x; z), nats", [("rate", "rate (KL to prior)"), ("mi", "I(x; z), test"),
                                ("mi_max", "log N (ceiling of the estimate)")], "log"),
    ("encoder std (test)", [("mean_sigma", "mean sigma(x)")], "log"),
    ("latent probes, test accuracy", [("probe_acc", "linear probe"), ("nn_acc", "1-NN")],
     "linear"),
    ("squared error per pixel", [("mse_train", "train"), ("mse_test", "test")], "log"),
    ("prior samples: FID (classifier space)", [("prior_fid", "FID")], "log"),
    ("prior samples: precision / recall", [("prior_precision", "precision"),
                                           ("prior_recall", "recall")], "linear"),
    ("memorisation", [("nearer_train", "fraction nearer a training image")], "linear"),
]
GROUP_STYLES = ("-", "--", ":", "-.")


def plot_sweep(rows: Sequence[dict], swept: str, path: str, title: str,
               group: Optional[str] = None) -> None:
    """One panel per measurement against the swept column (evenly spaced, labelled by value);
    with ``group``, one line style per value of that column (e.g. beta in the K sweep)."""
    panels = [(t, [(k, lab) for k, lab in cols if k in rows[0]], scale)
              for t, cols, scale in SWEEP_PANELS]
    panels = [p for p in panels if p[1]]
    ncols = 4
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.2 * nrows), squeeze=False)
    groups = sorted({r[group] for r in rows}) if group else [None]
    values = sorted({r[swept] for r in rows})
    for ax, (panel_title, cols, scale) in zip(axes.flat, panels):
        for i, (key, label) in enumerate(cols):
            colour = "grey" if key == "mi_max" else f"C{i}"
            for j, g in enumerate(groups):
                if key == "mi_max" and j:
                    continue
                chosen = sorted((r for r in rows if group is None or r[group] == g),
                                key=lambda r: r[swept])
                name = label if g is None or key == "mi_max" else f"{label}, {group}={g:g}"
                ax.plot([values.index(r[swept]) for r in chosen], [r[key] for r in chosen],
                        ":" if key == "mi_max" else GROUP_STYLES[j % len(GROUP_STYLES)],
                        color=colour, marker="o", markersize=3, label=name, linewidth=1)
        if cols[0][0] == "nearer_train":  # chance is 0.5: a scale that shows noise as noise
            ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
            ax.set_ylim(0.25, 0.75)
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels([f"{v:g}" for v in values])
        ax.set_xlabel(swept)
        ax.set_yscale(scale)
        ax.set_title(panel_title, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with write_atomically(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


def plot_rate_distortion(series: dict[str, list[tuple[float, float, str]]], path: str,
                         title: str) -> None:
    """Points (rate in nats, distortion as squared error per pixel, label), one series per sweep,
    on one plane (Alemi et al. 2018); the rate axis is logarithmic."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = iter("osD^v")
    for name, points in series.items():
        points = sorted(points)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=next(markers),
                linewidth=0.8, label=name)
        for rate, distortion, label in points:
            ax.annotate(label, (rate, distortion), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rate R = E KL(q(z|x) || N(0, I)), nats per image (test)")
    ax.set_ylabel("distortion D = squared error per pixel (test)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with write_atomically(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def plot_sigma_curves(curves: dict[str, np.ndarray], steps_per_epoch: int, path: str,
                      title: str, window: int = 20) -> None:
    """The encoder's mean std against epochs (a running mean over ``window`` steps), one line per
    run, on a log scale."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, values in curves.items():
        values = np.asarray(values, np.float64)
        w = min(window, len(values))
        smooth = np.convolve(values, np.ones(w) / w, mode="valid")
        xs = (np.arange(len(smooth)) + w) / steps_per_epoch
        ax.plot(xs, smooth, label=label, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("encoder std sigma(x), mean over batch and dimensions")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with write_atomically(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
