"""Pictures: image grids, GIF animations, training curves (matplotlib and Pillow, no display).

Figures are drawn on matplotlib ``Figure`` objects and written with Agg, without pyplot:
importing jaxgen leaves the process's matplotlib backend (a notebook's, say) as it was."""

from __future__ import annotations

import math
import os
from typing import Iterable, Optional, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from matplotlib.ticker import MaxNLocator
from PIL import Image

from jaxgen.workdir import write_atomically


def _save_figure(fig: Figure, path: str) -> None:
    with write_atomically(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)


def _figure(nrows: int = 1, ncols: int = 1, figsize=(8, 4.5), squeeze: bool = True):
    """(figure, axes) drawn with Agg, whatever pyplot's backend is."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images in [-1, 1] (float) or already uint8 -> uint8 in [0, 255]."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, ncols: Optional[int] = None, pad: int = 2) -> np.ndarray:
    """(N, H, W, C) images -> one (rows*(H+pad)+pad, cols*(W+pad)+pad, C) uint8 array."""
    images = to_uint8(images)
    n, h, w, c = images.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    grid = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.uint8)
    for k in range(n):
        r, q = divmod(k, ncols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top:top + h, left:left + w] = images[k]
    return grid


def grid_pixels(images: np.ndarray, ncols: Optional[int] = None, scale: int = 2) -> np.ndarray:
    """The uint8 (H, W, C) picture of an image grid, its pixels ``scale`` times enlarged
    (nearest neighbour) for viewing."""
    grid = image_grid(images, ncols)
    return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1) if scale != 1 else grid


def save_pixels(pixels: np.ndarray, path: str) -> None:
    """Writes uint8 (H, W, C) ``pixels`` (C = 1: grey, 3: RGB) as a PNG file."""
    picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    with write_atomically(path, "wb") as f:
        picture.save(f, format="PNG")


def save_image_grid(images: np.ndarray, path: str, ncols: Optional[int] = None,
                    scale: int = 2) -> None:
    """Writes a PNG grid of (N, H, W, C) ``images``; ``scale`` enlarges pixels for viewing."""
    save_pixels(grid_pixels(images, ncols, scale), path)


def save_gif(frame_paths: Sequence[str], path: str, seconds_per_frame: float = 0.4) -> None:
    """An animated GIF of the given image files, in order, looping."""
    frames = [Image.open(p).convert("L") for p in frame_paths]
    if not frames:
        return
    with write_atomically(path, "wb") as f:
        frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                       duration=int(seconds_per_frame * 1000), loop=0)


def plot_curves(curves: dict[str, Iterable[float]], path: str, xlabel: str = "Iter",
                ylabel: str = "Loss", title: Optional[str] = None,
                x: Optional[Sequence[float]] = None) -> None:
    """One line per named curve against its index (or ``x``), as the reference's ``loss_plot``;
    a seed ensemble's curve, (runs, steps), one line per run in the curve's colour."""
    fig, ax = _figure(figsize=(8, 4.5))
    for label, values in curves.items():
        runs = _runs(values)
        xs = np.arange(runs.shape[1]) if x is None else np.asarray(x, dtype=float)
        _plot_runs(ax, xs, runs, label, marker=None if x is None else "o")
    if x is not None and all(float(v).is_integer() for v in x):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs: no ticks at 1.5
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _save_figure(fig, path)


def plot_score_curves(curves: dict[str, Iterable], floor: float, path: str, x: Sequence[float],
                      ylabel: str, title: Optional[str] = None) -> None:
    """Many models' scores against the epoch on one log-scale figure (e.g. a collection's FID):
    each model a colour of its own (20, then again), its runs' mean a line with markers and each run
    (of a seed ensemble, (runs, points)) a thin line beside it; the real-data ``floor`` dashed
    black; the legend outside the axes."""
    fig, ax = _figure(figsize=(9.5, 5))
    colours = matplotlib.colormaps["tab20"].colors
    xs = np.asarray(x, dtype=float)
    for i, (label, values) in enumerate(curves.items()):
        runs, colour = _runs(values), colours[(2 * i + i // 10) % 20]  # dark ones, then light
        if len(runs) > 1:
            for values in runs:
                ax.plot(xs, values, color=colour, linewidth=0.5, alpha=0.5)
            label = f"{label} (mean of {len(runs)} runs)"
        ax.plot(xs, runs.mean(axis=0), color=colour, linewidth=1.4, marker="o", markersize=3,
                label=label)
    ax.axhline(floor, color="black", linestyle="--", linewidth=1, label="real-data floor")
    ax.set_yscale("log")
    if all(float(v).is_integer() for v in xs):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _save_figure(fig, path)


def _runs(values) -> np.ndarray:
    """A curve as (runs, points): one run for a flat sequence."""
    values = np.asarray(list(values), dtype=float)
    return values if values.ndim == 2 else values[None]


def _plot_runs(ax, xs, runs: np.ndarray, label: Optional[str] = None, **kwargs) -> None:
    """Each run's line, in one colour, labelled once."""
    color = None
    if label is not None and len(runs) > 1:
        label = f"{label} ({len(runs)} runs)"
    for r, values in enumerate(runs):
        (line,) = ax.plot(xs, values, label=label if r == 0 else None, color=color,
                          linewidth=0.6, alpha=1.0 if len(runs) == 1 else 0.5, **kwargs)
        color = line.get_color()


def plot_panels(curves: dict[str, Iterable[float]], path: str, xlabel: str = "Iter",
                ylabels: Optional[dict[str, str]] = None, title: Optional[str] = None) -> None:
    """One panel per named curve, side by side: for curves of different scales (an ensemble's,
    (runs, steps), one line per run)."""
    fig, axes = _figure(1, len(curves), figsize=(3.2 * len(curves), 3.2), squeeze=False)
    for ax, (label, values) in zip(axes[0], curves.items()):
        runs = _runs(values)
        _plot_runs(ax, np.arange(runs.shape[1]), runs)
        ax.set_title(label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel((ylabels or {}).get(label, ""))
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save_figure(fig, path)


def save_image_panels(grids: dict[str, np.ndarray], path: str, ncols: Optional[int] = None,
                      title: Optional[str] = None) -> None:
    """Several image grids side by side, each under its title (e.g. one per model)."""
    _save_panels({label: image_grid(images, ncols) for label, images in grids.items()}, path,
                 title)


def save_picture_panels(pictures: dict[str, str], path: str, title: Optional[str] = None,
                        per_row: Optional[int] = None) -> None:
    """Pictures already saved (e.g. each model's ``<NAME>_epochNNN.png``) side by side, each
    under its title, ``per_row`` a row (default: all in one)."""
    arrays = {}
    for label, file in pictures.items():
        with Image.open(file) as picture:
            arrays[label] = np.asarray(picture.convert("L"))[..., None]
    _save_panels(arrays, path, title, per_row)


def _save_panels(pictures: dict[str, np.ndarray], path: str, title: Optional[str],
                 per_row: Optional[int] = None) -> None:
    ncols = min(per_row or len(pictures), len(pictures))
    nrows = int(math.ceil(len(pictures) / ncols))
    fig, axes = _figure(nrows, ncols, figsize=(4.2 * ncols, 4.6 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, grid) in zip(axes.flat, pictures.items()):
        if grid.shape[-1] == 1:  # grey levels as they are, not stretched to the panel's range
            ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(grid, interpolation="nearest")
        ax.set_title(label)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save_figure(fig, path)


def plot_latent_scatter(panels: dict[str, tuple[np.ndarray, np.ndarray]],
                        class_names: Sequence[str], path: str,
                        title: Optional[str] = None) -> None:
    """2-D posterior means coloured by class, one panel per model: ``{label: (mu, labels)}``.

    The circle of radius 2 marks where 95% of the N(0, I) prior's mass lies, i.e. where prior
    samples land; each panel is scaled to its own data.
    """
    fig, axes = _figure(1, len(panels), figsize=(5.2 * len(panels), 5), squeeze=False)
    colours = matplotlib.colormaps["tab10"]
    for ax, (label, (mu, labels)) in zip(axes[0], panels.items()):
        for c, name in enumerate(class_names):
            pick = labels == c
            ax.scatter(mu[pick, 0], mu[pick, 1], s=2, alpha=0.5, color=colours(c % 10),
                       label=name, rasterized=True)
        ax.add_patch(Circle((0, 0), 2.0, fill=False, linestyle="--", color="black",
                                linewidth=0.8))
        ax.set_title(label)
        ax.set_xlabel("z1")
        ax.set_ylabel("z2")
        ax.set_aspect("equal", adjustable="datalim")
    axes[0][-1].legend(markerscale=5, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save_figure(fig, path)


def latent_grid_points(n: int = 15, extent: float = 2.0) -> np.ndarray:
    """(n*n, 2) points on a regular grid over [-extent, extent]^2, row by row from the top
    (z2 decreasing), left to right (z1 increasing), to decode into an n x n image grid."""
    axis = np.linspace(-extent, extent, n)
    z1, z2 = np.meshgrid(axis, axis[::-1])
    return np.stack([z1.ravel(), z2.ravel()], axis=-1).astype(np.float32)
