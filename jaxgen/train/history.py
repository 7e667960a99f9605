"""The reference's ``train_hist``, and the files written from it after every epoch.

``<TASK>_history.json`` (per-step metrics, per-epoch times, total time), ``<TASK>_loss.png`` and
``metrics.jsonl`` (the logged steps and a summary per epoch) are written anew from the history
each time, so a resumed run has each row once.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from jaxgen import viz
from jaxgen.workdir import write_atomically


@dataclasses.dataclass
class History:
    """Per-step metrics, per-epoch times and the total time (seconds)."""

    metrics: dict[str, list[float]]
    per_epoch_time: list[float]
    total_time: float = 0.0

    def to_dict(self) -> dict:
        return {**self.metrics, "per_epoch_time": self.per_epoch_time,
                "total_time": [self.total_time]}

    @classmethod
    def from_dict(cls, d: dict, metric_names) -> "History":
        total = d.get("total_time") or [0.0]
        return cls({k: list(d[k]) for k in metric_names}, list(d["per_epoch_time"]), total[0])


def write_history(name: str, title: str, workdir: str, history: History) -> None:
    """``<name>_history.json`` and ``<name>_loss.png``."""
    with write_atomically(os.path.join(workdir, f"{name}_history.json")) as f:
        json.dump(history.to_dict(), f)
    viz.plot_curves(history.metrics, os.path.join(workdir, f"{name}_loss.png"), title=title)


def write_epoch_outputs(name: str, title: str, workdir: str, history: History,
                        log_every: int) -> None:
    """``metrics.jsonl`` and the history files."""
    epochs = len(history.per_epoch_time)
    steps = len(next(iter(history.metrics.values()))) // epochs
    with write_atomically(os.path.join(workdir, "metrics.jsonl")) as f:
        for epoch in range(1, epochs + 1):
            offset = (epoch - 1) * steps
            for i in range(log_every, steps + 1, log_every):
                row = {"epoch": epoch, "step": i,
                       **{k: v[offset + i - 1] for k, v in history.metrics.items()}}
                f.write(json.dumps(row) + "\n")
            summary = {"epoch": epoch, "epoch_time": history.per_epoch_time[epoch - 1],
                       **{f"mean_{k}": float(np.mean(v[offset:offset + steps]))
                          for k, v in history.metrics.items()}}
            f.write(json.dumps(summary) + "\n")
    write_history(name, title, workdir, history)


def epoch_images(workdir: str, prefix: str) -> list[str]:
    """The per-epoch grids ``<prefix>_epochNNN.png`` of ``workdir``, in order."""
    names = sorted(n for n in os.listdir(workdir)
                   if n.startswith(prefix + "_epoch") and n.endswith(".png"))
    return [os.path.join(workdir, n) for n in names]
