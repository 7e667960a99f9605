"""Figures of the KL question: a sweep's measurements against the swept value, the rate-distortion
plane, the encoder's std over training (sweeps.py); the claims' measures
against the training-set size, the train/test gap over training and the nearest-image distances
(data_size.py)."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxgen.workdir import write_atomically


def _subplots(nrows: int = 1, ncols: int = 1, figsize=(6.5, 4.5), squeeze: bool = True):
    """A figure drawn with Agg, without pyplot (no backend of the caller's is touched)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def _save(fig: Figure, path: str, dpi: int = 100) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    with write_atomically(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)


def _panel_grid(panels, row: dict, ncols: int, width: float, height: float):
    """The panels (title, [(column, legend)], y scale) with the columns ``row`` has, those
    left without any dropped, and a figure of up to ``ncols`` columns of axes for them."""
    panels = [(t, [(k, lab) for k, lab in cols if k in row], scale) for t, cols, scale in panels]
    panels = [p for p in panels if p[1]]
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = _subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return panels, fig, axes


def _per_size(data: dict, title: str):
    """For ``data`` keyed by (point label, n): the sizes, the labels and a row of axes, one
    per size, titled ``title`` with n."""
    sizes = sorted({n for _, n in data})
    labels = list(dict.fromkeys(label for label, _ in data))
    fig, axes = _subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.6), squeeze=False)
    for ax, n in zip(axes.flat, sizes):
        ax.set_title(title.format(n=n), fontsize=9)
    return sizes, labels, fig, axes


def _finish(fig: Figure, axes, used: int, title: str, path: str) -> None:
    """Blanks the axes after the first ``used``, titles the figure and saves it."""
    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    _save(fig, path, dpi=90)


def _finish_plane(fig: Figure, ax, xlabel: str, ylabel: str, title: str, path: str) -> None:
    """One panel's log y scale, labels, title, grid and legend; saves the figure."""
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def _chance_line(ax, cols) -> bool:
    """The 0.5 line of the memorisation panel (chance: no memorisation); whether drawn."""
    if cols[0][0] != "nearer_train":
        return False
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    return True


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
LINE_STYLES = ("-", "--", ":", "-.")  # a line's style by its group or column


def plot_sweep(rows: Sequence[dict], swept: str, path: str, title: str,
               group: Optional[str] = None) -> None:
    """One panel per measurement against the swept column (evenly spaced, labelled by value);
    with ``group``, one line style per value of that column (e.g. beta in the K sweep). Rows
    of several runs' means (``report.summarise``) show their std as error bars."""
    panels, fig, axes = _panel_grid(SWEEP_PANELS, rows[0], 4, 3.6, 3.2)
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
                ax.errorbar([values.index(r[swept]) for r in chosen], [r[key] for r in chosen],
                            yerr=[r[key + "_std"] for r in chosen] if key + "_std" in rows[0]
                            else None,
                            linestyle=":" if key == "mi_max" else
                            LINE_STYLES[j % len(LINE_STYLES)], color=colour, marker="o",
                            markersize=3, capsize=2, label=name, linewidth=1)
        if _chance_line(ax, cols):  # a scale that shows noise as noise
            ax.set_ylim(0.25, 0.75)
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels([f"{v:g}" for v in values])
        ax.set_xlabel(swept)
        ax.set_yscale(scale)
        ax.set_title(panel_title, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    _finish(fig, axes, len(panels), title, path)


def plot_rate_distortion(series: dict[str, list[tuple[float, float, str]]], path: str,
                         title: str) -> None:
    """Points (rate in nats, distortion as squared error per pixel, label), one series per sweep,
    on one plane (Alemi et al. 2018); the rate axis is logarithmic."""
    fig, ax = _subplots(figsize=(6.5, 4.5))
    markers = iter("osD^v")
    for name, points in series.items():
        points = sorted(points)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=next(markers),
                linewidth=0.8, label=name)
        for rate, distortion, label in points:
            ax.annotate(label, (rate, distortion), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
    ax.set_xscale("log")
    _finish_plane(fig, ax, "rate R = E KL(q(z|x) || N(0, I)), nats per image (test)",
                  "distortion D = squared error per pixel (test)", title, path)


def plot_sigma_curves(curves: dict[str, np.ndarray], steps_per_epoch: int, path: str,
                      title: str, window: int = 20) -> None:
    """The encoder's mean std against epochs (a running mean over ``window`` steps), one line per
    run, on a log scale."""
    fig, ax = _subplots(figsize=(6.5, 4.2))
    for label, values in curves.items():
        values = np.asarray(values, np.float64)
        w = min(window, len(values))
        smooth = np.convolve(values, np.ones(w) / w, mode="valid")
        xs = (np.arange(len(smooth)) + w) / steps_per_epoch
        ax.plot(xs, smooth, label=label, linewidth=1)
    _finish_plane(fig, ax, "epoch", "encoder std sigma(x), mean over batch and dimensions", title,
                  path)


# ------------------------------------------------------------------ against the training-set size
# file stem -> panels (title, [(column, legend)], y scale): one figure per claim.
DATA_SIZE_FIGURES = {
    "claim1_latent": [
        ("latent probes, test accuracy", [("probe_acc", "linear probe"), ("nn_acc", "1-NN")],
         "linear"),
        ("I(x; z) under q (test), nats", [("mi", "I(x; z)")], "linear"),
        ("rate KL(q(z|x) || p(z)), nats", [("rate", "rate")], "log"),
        ("encoder std (test)", [("mean_sigma", "mean sigma(x)")], "log"),
        ("active units", [("active_units", "active units")], "linear"),
    ],
    "claim2_overfitting": [
        ("squared error per pixel", [("mse_train", "train"), ("mse_test", "test")], "log"),
        ("test - train squared error", [("mse_gap", "MSE gap")], "linear"),
        ("test - train IWAE bound, nats", [("iwae_gap", "IWAE gap")], "linear"),
        ("memorisation: fraction nearer a training image",
         [("nearer_train", "prior samples"), ("null_nearer_train", "held-out real images")],
         "linear"),
        ("nearest-image distance, prior samples", [("d_train", "to train"),
                                                   ("d_test", "to test")], "linear"),
    ],
    "claim3_samples": [
        ("prior samples: FID (classifier space)", [("prior_fid", "FID")], "log"),
        ("prior samples: precision", [("prior_precision", "precision")], "linear"),
        ("prior samples: recall", [("prior_recall", "recall")], "linear"),
        ("KL(q(z) || p(z)), nats", [("marginal_kl", "aggregate posterior to prior")], "log"),
    ],
}


def _point_label(row: dict) -> str:
    return f"beta={row['beta']:g}, sigma={row['sigma']:g} (beta_eff={row['beta_eff']:g})"


def plot_against_size(summary: Sequence[dict], panels, path: str, title: str) -> None:
    """One panel per measure against the training-set size (log axis): a line per point
    (beta, sigma), its mean over seeds with the seeds' std as error bars; one line style per
    column of a panel."""
    panels, fig, axes = _panel_grid(panels, summary[0], 3, 4.6, 3.6)
    labels = list(dict.fromkeys(_point_label(s) for s in summary))
    for ax, (panel_title, cols, scale) in zip(axes.flat, panels):
        for j, (key, name) in enumerate(cols):
            for i, label in enumerate(labels):
                chosen = sorted((s for s in summary if _point_label(s) == label),
                                key=lambda s: s["n"])
                ax.errorbar([s["n"] for s in chosen], [s[key] for s in chosen],
                            yerr=[s[key + "_std"] for s in chosen], color=f"C{i}",
                            linestyle=LINE_STYLES[j % len(LINE_STYLES)], marker="o",
                            markersize=3, capsize=2, linewidth=1,
                            label=label if len(cols) == 1 else f"{name}, {label}")
        _chance_line(ax, cols)
        ax.set_xscale("log")
        ax.set_yscale(scale)
        ax.set_xlabel("training images n")
        ax.set_title(panel_title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    _finish(fig, axes, len(panels), title, path)


def plot_gap_over_training(histories: dict, path: str, title: str) -> None:
    """The test - train squared error against the epoch, one panel per training-set size, a line
    per point: the mean over seeds, the band their min to max. ``histories``: (point label, n)
    -> [per-seed list of {"epoch", "mse_train", "mse_test"}]."""
    sizes, labels, fig, axes = _per_size(histories, "n = {n}: test - train squared error")
    for ax, n in zip(axes.flat, sizes):
        for i, label in enumerate(labels):
            runs = histories.get((label, n))
            if not runs:
                continue
            epochs = [h["epoch"] for h in runs[0]]
            gaps = np.asarray([[h["mse_test"] - h["mse_train"] for h in run[:len(epochs)]]
                               for run in runs if len(run) >= len(epochs)], np.float64)
            ax.plot(epochs, gaps.mean(axis=0), color=f"C{i}", marker="o", markersize=3,
                    linewidth=1, label=label)
            ax.fill_between(epochs, gaps.min(axis=0), gaps.max(axis=0), color=f"C{i}",
                            alpha=0.2)
        ax.axhline(0, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    _finish(fig, axes, len(sizes), title, path)


def plot_nn_distances(distances: dict, path: str, title: str) -> None:
    """Histograms of each prior sample's distance to its nearest training image minus that to its
    nearest test image (< 0: nearer a training image), one panel per training-set size, a line
    per point and one for held-out real images. ``distances``: (point label, n) -> arrays
    ``d_train``, ``d_test``, ``null_train``, ``null_test``."""
    sizes, labels, fig, axes = _per_size(distances, "n = {n}")
    for ax, n in zip(axes.flat, sizes):
        chosen = [(i, label, distances[(label, n)]) for i, label in enumerate(labels)
                  if (label, n) in distances]
        diffs = [d["d_train"] - d["d_test"] for _, _, d in chosen]
        null = chosen[0][2]["null_train"] - chosen[0][2]["null_test"]
        lo = min(np.percentile(np.concatenate(diffs + [null]), 1), -1e-3)
        hi = max(np.percentile(np.concatenate(diffs + [null]), 99), 1e-3)
        bins = np.linspace(lo, hi, 40)
        for (i, label, _), diff in zip(chosen, diffs):
            ax.hist(diff, bins=bins, histtype="step", color=f"C{i}", linewidth=1.2,
                    label=f"{label}: {np.mean(diff < 0):.0%} < 0")
        ax.hist(null, bins=bins, histtype="stepfilled", color="grey", alpha=0.3,
                label=f"held-out real images: {np.mean(null < 0):.0%} < 0")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("d(nearest train) - d(nearest test)")
        ax.legend(fontsize=6)
    _finish(fig, axes, len(sizes), title, path)
