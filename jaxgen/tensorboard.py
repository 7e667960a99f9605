"""TensorBoard event files of a run, in ``WORKDIR/tensorboard/``, written with tensorboardX.

    tensorboard --logdir checkpoints/        # every run under it, while it trains

A run shows the logged metrics of every logged step (``D_loss``, ``G_loss``, ... at the global
step) and, after every epoch, its time (``epoch_time``), the task's pictures (tagged
``<TASK>[_what]``, as their files are named) and the scalars its epoch hooks returned (an
evaluation's ``eval/fid``, ...). The training loop hands :class:`Board` the values themselves;
the Board reads nothing back. When a run starts or resumes, the event files are written anew
from the checkpoint's history first, so a resumed run shows each step once and in order,
whatever a killed run had written.

Writes are synchronous: a full disk or a read-only directory is one error when it happens,
never a curve silently cut short.
"""

from __future__ import annotations

import glob
import io
import os
import time
from typing import Callable, Optional

import numpy as np

from jaxgen.workdir import unwritable

DIRECTORY = "tensorboard"
_KEPT = "the run's checkpoints are intact"


class EventFile:
    """One event file of TensorBoard's in ``directory`` (tensorboardX's writer, without its
    background thread, so that every failed write is raised here)."""

    def __init__(self, directory: str):
        from tensorboardX.event_file_writer import EventsWriter  # a run that writes one needs it

        try:
            os.makedirs(directory, exist_ok=True)
            self._writer = EventsWriter(os.path.join(directory, "events"), ".jaxgen")
        except OSError as e:
            raise unwritable(directory, e, _KEPT) from None
        self.path = self._writer._file_name

    def _write(self, step: int, summary) -> None:
        from tensorboardX.proto.event_pb2 import Event

        try:
            self._writer.write_event(Event(wall_time=time.time(), step=step, summary=summary))
        except OSError as e:
            raise unwritable(self.path, e, _KEPT) from None

    def scalars(self, step: int, values: dict) -> None:
        from tensorboardX.proto.summary_pb2 import Summary

        self._write(step, Summary(value=[Summary.Value(tag=tag, simple_value=float(v))
                                         for tag, v in values.items()]))

    def image(self, step: int, tag: str, pixels: np.ndarray) -> None:
        """``pixels``, uint8 (H, W, C) with C = 1 (grey) or 3, as a PNG image."""
        from PIL import Image
        from tensorboardX.proto.summary_pb2 import Summary

        height, width, channels = pixels.shape
        png = io.BytesIO()
        Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(png, format="PNG")
        image = Summary.Image(height=height, width=width, colorspace=channels,
                              encoded_image_string=png.getvalue())
        self._write(step, Summary(value=[Summary.Value(tag=tag, image=image)]))

    def flush(self) -> None:
        try:
            self._writer.flush()
        except OSError as e:
            raise unwritable(self.path, e, _KEPT) from None

    def close(self) -> None:
        try:
            self._writer.close()
        except OSError as e:
            raise unwritable(self.path, e, _KEPT) from None


class Board:
    """What the training loop shows in TensorBoard for the run in ``workdir`` (process 0).

    A seed ensemble of ``num_runs`` runs writes each run's scalars into ``tensorboard/run<r>/``
    (TensorBoard draws one curve per run, with the run's name) and what the runs share (the
    epoch's time, its pictures of every run) into ``tensorboard/``."""

    def __init__(self, workdir: str, steps_per_epoch: int, log_every: int, num_runs: int = 1):
        self.steps_per_epoch, self.log_every, self.num_runs = steps_per_epoch, log_every, num_runs
        self.directory = os.path.join(workdir, DIRECTORY)
        self._file: Optional[EventFile] = None
        self._runs: list[EventFile] = []  # an ensemble's, one per run

    def run_directory(self, run: int) -> str:
        return os.path.join(self.directory, f"run{run}")

    def rebuild(self, metrics: dict, epoch_times: list, epoch_scalars: list,
                pictures: Callable[[int], dict]) -> None:
        """Event files written anew from a checkpoint's history (per-step ``metrics``, one list
        per name, an ensemble's one per run; the per-epoch times; per epoch, the hooks'
        scalars) and each epoch's pictures (``pictures(epoch) -> {tag: uint8 (H, W, C)}``):
        whatever the directory held is replaced."""
        for pattern in ("events.out.tfevents.*", os.path.join("run*", "events.out.tfevents.*")):
            for stale in glob.glob(os.path.join(self.directory, pattern)):
                os.remove(stale)
        self._file = EventFile(self.directory)
        if self.num_runs > 1:
            self._runs = [EventFile(self.run_directory(r)) for r in range(self.num_runs)]
        for epoch, seconds in enumerate(epoch_times, start=1):
            offset = (epoch - 1) * self.steps_per_epoch
            for i in range(self.log_every, self.steps_per_epoch + 1, self.log_every):
                at = offset + i - 1
                self.step(epoch, i, {k: v[at] if self.num_runs == 1 else [run[at] for run in v]
                                     for k, v in metrics.items()})
            scalars = epoch_scalars[epoch - 1] if epoch <= len(epoch_scalars) else {}
            self.epoch_end(epoch, seconds, pictures(epoch), scalars)

    def step(self, epoch: int, step: int, values: dict) -> None:
        """The metrics logged at ``step`` (1-based) of ``epoch`` (an ensemble's: one value per
        run)."""
        at = (epoch - 1) * self.steps_per_epoch + step
        if self.num_runs == 1:
            self._file.scalars(at, values)
        for r, run in enumerate(self._runs):
            run.scalars(at, {k: v[r] for k, v in values.items()})

    def epoch_end(self, epoch: int, seconds: float, pictures: dict, scalars: dict) -> None:
        """After ``epoch``: its time, its pictures ({tag: uint8 (H, W, C)}) and other scalars
        (an ensemble's hooks may give a list of one value per run)."""
        step = epoch * self.steps_per_epoch
        shared = {k: v for k, v in scalars.items() if not isinstance(v, (list, tuple))}
        self._file.scalars(step, {"epoch_time": seconds, **shared})
        for tag, pixels in pictures.items():
            self._file.image(step, tag, pixels)
        for r, run in enumerate(self._runs):
            own = {k: v[r] for k, v in scalars.items() if isinstance(v, (list, tuple))}
            if own:
                run.scalars(step, own)
            run.flush()
        self._file.flush()

    def close(self) -> None:
        for event_file in [self._file, *self._runs]:
            if event_file is not None:
                event_file.close()
