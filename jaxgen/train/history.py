"""A run's history: the reference's ``train_hist`` (per-step metrics, per-epoch times, the
total time) and, per epoch, the scalars its epoch hooks returned. It is saved with every
checkpoint; ``jaxgen.train.outputs`` writes the files shown from it.

A seed ensemble's history (``jaxgen.train.ensemble``) keeps every run's: each metric is a list
of per-run lists (``metrics["D_loss"][r][step]``), and a hook's scalar may be a list of per-run
values. :meth:`History.run` gives one run's history, as a solo run's.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class History:
    """Per-step metrics, per-epoch times and the total time (seconds)."""

    metrics: dict[str, list]  # name -> per-step floats; an ensemble's: per-run lists of them
    per_epoch_time: list[float]
    total_time: float = 0.0
    # One dict per epoch: what the epoch hooks returned (e.g. {"eval/fid": ...}), else {}.
    epoch_scalars: list[dict] = dataclasses.field(default_factory=list)

    @classmethod
    def empty(cls, metric_names, num_runs: int = 1) -> "History":
        """The history of a run (``num_runs`` > 1: an ensemble) that has trained no step."""
        if num_runs == 1:
            return cls({k: [] for k in metric_names}, [])
        return cls({k: [[] for _ in range(num_runs)] for k in metric_names}, [])

    @property
    def num_runs(self) -> int:
        first = next(iter(self.metrics.values()), [])
        return len(first) if first and isinstance(first[0], list) else 1

    def add_epoch(self, metrics: dict, seconds: float) -> None:
        """An epoch's per-step ``metrics`` (name -> (steps,), an ensemble's (runs, steps)) and
        its time."""
        for k, values in metrics.items():
            values = np.asarray(values)
            if self.num_runs == 1:
                self.metrics[k].extend(values.tolist())
            else:
                for run, run_values in zip(self.metrics[k], values):
                    run.extend(run_values.tolist())
        self.per_epoch_time.append(seconds)

    def run(self, r: int) -> "History":
        """Run ``r``'s history, as a solo run's (an ensemble's scalars: run ``r``'s value)."""
        if self.num_runs == 1:
            return self
        return History({k: v[r] for k, v in self.metrics.items()}, self.per_epoch_time,
                       self.total_time,
                       [{k: v[r] if isinstance(v, list) else v for k, v in s.items()}
                        for s in self.epoch_scalars])

    def train_hist(self) -> dict:
        """As the reference's ``train_hist``: the metrics, per-epoch and total time."""
        return {**self.metrics, "per_epoch_time": self.per_epoch_time,
                "total_time": [self.total_time]}

    def to_dict(self) -> dict:
        """All of it, as the checkpoint keeps it."""
        return {**self.train_hist(), "epoch_scalars": self.epoch_scalars}

    @classmethod
    def from_dict(cls, d: dict, metric_names) -> "History":
        total = d.get("total_time") or [0.0]
        epochs = len(d["per_epoch_time"])
        scalars = list(d.get("epoch_scalars") or [])  # absent from older checkpoints
        return cls({k: list(d[k]) for k in metric_names}, list(d["per_epoch_time"]), total[0],
                   scalars + [{}] * (epochs - len(scalars)))
