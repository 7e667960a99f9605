"""A run's history: the reference's ``train_hist`` (per-step metrics, per-epoch times, the
total time) and, per epoch, the scalars its epoch hooks returned. It is saved with every
checkpoint; ``jaxgen.train.outputs`` writes the files shown from it."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class History:
    """Per-step metrics, per-epoch times and the total time (seconds)."""

    metrics: dict[str, list[float]]
    per_epoch_time: list[float]
    total_time: float = 0.0
    # One dict per epoch: what the epoch hooks returned (e.g. {"eval/fid": ...}), else {}.
    epoch_scalars: list[dict] = dataclasses.field(default_factory=list)

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
