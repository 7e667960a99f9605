"""Pictures: image grids, GIF animations, training curves (matplotlib and Pillow, no display)."""

from __future__ import annotations

import math
import os
from typing import Iterable, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


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


def save_image_grid(images: np.ndarray, path: str, ncols: Optional[int] = None,
                    scale: int = 2) -> None:
    """Writes a PNG grid; ``scale`` enlarges pixels (nearest neighbour) for viewing."""
    grid = image_grid(images, ncols)
    mode = "L" if grid.shape[-1] == 1 else "RGB"
    picture = Image.fromarray(grid[..., 0] if mode == "L" else grid, mode=mode)
    if scale != 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    picture.save(path)


def save_gif(frame_paths: Sequence[str], path: str, seconds_per_frame: float = 0.4) -> None:
    """An animated GIF of the given image files, in order, looping."""
    frames = [Image.open(p).convert("L") for p in frame_paths]
    if not frames:
        return
    frames[0].save(path, save_all=True, append_images=frames[1:],
                   duration=int(seconds_per_frame * 1000), loop=0)


def plot_curves(curves: dict[str, Iterable[float]], path: str, xlabel: str = "Iter",
                ylabel: str = "Loss", title: Optional[str] = None,
                x: Optional[Sequence[float]] = None) -> None:
    """One line per named curve against its index (or ``x``), as the reference's ``loss_plot``."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, values in curves.items():
        values = np.asarray(list(values), dtype=float)
        xs = np.arange(len(values)) if x is None else np.asarray(x, dtype=float)
        ax.plot(xs, values, label=label, linewidth=0.6, marker=None if x is None else "o")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
