"""The files of a run besides its checkpoints, all written by the training loop, on the main
process only, and each written whole (``write_atomically``): a reader never sees half a file.

    config.json                     the task's name and config
    <TASK>[_what]_epochNNN.png      each picture the task draws after every epoch
    <TASK>_<what>.png               each picture it draws once, after the last epoch
    <TASK>_generate_animation.gif   the per-epoch sample grids, animated
    <TASK>_history.json             the reference's train_hist: per-step metrics, epoch times
    <TASK>_loss.png                 the metrics against the step, as the reference plots them
    <TASK>_curves.png               one panel per metric (tasks that give ``metric_units``)
    metrics.jsonl                   the logged steps and a summary per epoch
    tensorboard/                    the same, for TensorBoard (``jaxgen.tensorboard``)

Tasks draw (:meth:`~jaxgen.train.task.Task.pictures`) and write nothing. The history files are
written anew from the history each time, so a resumed run has each row once.

A seed ensemble (``jaxgen.train.ensemble``) writes the same files, each holding every run: each
grid one block of rows per run (run 0 on top), the history's metrics one list per run, the
curves one line per run, ``metrics.jsonl`` one row per run (its ``"run"``) and TensorBoard one
directory per run (``tensorboard/run<r>/``).
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from jaxgen import viz
from jaxgen.tensorboard import Board
from jaxgen.train.history import History
from jaxgen.train.task import Task
from jaxgen.workdir import write_atomically

SCALE = 2  # a picture's pixels are written (and shown in TensorBoard) this many times enlarged


def picture_tag(task_name: str, what: str) -> str:
    """The stem of a picture's files and its TensorBoard tag: ``GAN`` or ``VAE_reconstruction``."""
    return f"{task_name}_{what}" if what else task_name


def epoch_picture_file(task_name: str, what: str, epoch: int) -> str:
    return f"{picture_tag(task_name, what)}_epoch{epoch:03d}.png"


def final_picture_file(task_name: str, what: str) -> str:
    """A picture drawn once after the last epoch: ``infoGAN_code1.png`` for "code1"."""
    return f"{picture_tag(task_name, what)}.png"


class RunOutputs:
    """The files of ``task``'s run in ``workdir``; on processes other than the main one every
    method does nothing."""

    def __init__(self, task: Task, workdir: str, steps_per_epoch: int, main: bool):
        self.task, self.workdir, self.main = task, workdir, main
        self.steps_per_epoch = steps_per_epoch
        self.num_runs = task.config.num_seeds
        self.board = (Board(workdir, steps_per_epoch, task.config.log_every, self.num_runs)
                      if main else None)

    def _path(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    def start(self, history: History) -> None:
        """``config.json``, and TensorBoard's files anew from ``history`` and the pictures of
        its epochs."""
        if not self.main:
            return
        with write_atomically(self._path("config.json")) as f:
            json.dump({"task": self.task.name, "config": self.task.config.to_dict()}, f,
                      indent=2)
        self.board.rebuild(history.metrics, history.per_epoch_time, history.epoch_scalars,
                           self._pictures_on_disk)

    def _pictures_on_disk(self, epoch: int) -> dict:
        """The pictures this loop wrote after ``epoch`` of an earlier session, as TensorBoard
        shows them; a file that does not read as a picture is left out."""
        from PIL import Image, UnidentifiedImageError

        suffix = f"_epoch{epoch:03d}.png"
        found = {}
        for name in sorted(os.listdir(self.workdir)):
            if name.startswith(self.task.name) and name.endswith(suffix):
                try:
                    with Image.open(self._path(name)) as picture:
                        pixels = np.asarray(picture.convert("L" if picture.mode == "L"
                                                            else "RGB"))
                except (OSError, UnidentifiedImageError):
                    continue
                found[name[:-len(suffix)]] = pixels if pixels.ndim == 3 else pixels[..., None]
        return found

    def step(self, epoch: int, step: int, values: dict) -> None:
        if self.main:
            self.board.step(epoch, step, values)

    def epoch_pictures(self, epoch: int, pictures: dict) -> dict:
        """Writes the pictures of ``epoch`` (``{what: Picture}`` on the host); returns them as
        TensorBoard shows them, ``{tag: uint8 (H, W, C)}``."""
        if not self.main:
            return {}
        shown = {}
        for what, picture in pictures.items():
            grid = viz.grid_pixels(picture.images, picture.ncols, SCALE)
            viz.save_pixels(grid, self._path(epoch_picture_file(self.task.name, what, epoch)))
            shown[picture_tag(self.task.name, what)] = grid
        return shown

    def epoch_end(self, epoch: int, history: History, shown: dict) -> None:
        """After ``epoch`` is saved: the history files (the curves are drawn when the run ends,
        as the reference draws its loss plot: a figure an epoch would cost a short epoch's
        time) and TensorBoard's epoch."""
        if not self.main:
            return
        self.write_history(history, curves=False)
        scalars = history.epoch_scalars[epoch - 1] if epoch <= len(history.epoch_scalars) else {}
        self.board.epoch_end(epoch, history.per_epoch_time[epoch - 1], shown, scalars)

    def write_history(self, history: History, curves: bool = True) -> None:
        """``metrics.jsonl``, ``<TASK>_history.json`` and (``curves``) the loss curves."""
        if not self.main:
            return
        epochs = len(history.per_epoch_time)
        steps, log_every = self.steps_per_epoch, self.task.config.log_every
        with write_atomically(self._path("metrics.jsonl")) as f:
            for epoch in range(1, epochs + 1):
                for run in range(self.num_runs):
                    metrics = history.run(run).metrics
                    tag = {} if self.num_runs == 1 else {"run": run}
                    offset = (epoch - 1) * steps
                    for i in range(log_every, steps + 1, log_every):
                        row = {"epoch": epoch, "step": i, **tag,
                               **{k: v[offset + i - 1] for k, v in metrics.items()}}
                        f.write(json.dumps(row) + "\n")
                    summary = {"epoch": epoch, **tag,
                               "epoch_time": history.per_epoch_time[epoch - 1],
                               **{f"mean_{k}": float(np.mean(v[offset:offset + steps]))
                                  for k, v in metrics.items()}}
                    f.write(json.dumps(summary) + "\n")
        name, title = self.task.name, self.task.title()
        with write_atomically(self._path(f"{name}_history.json")) as f:
            json.dump(history.train_hist(), f)
        if curves:
            viz.plot_curves(history.metrics, self._path(f"{name}_loss.png"), title=title)

    def run_end(self, history: History, final_pictures: Optional[dict]) -> None:
        """After the last epoch: the pictures drawn once, the animation of the sample grids,
        the history files with the run's total time, the loss curves and the metric panels."""
        if not self.main:
            return
        name = self.task.name
        for what, picture in (final_pictures or {}).items():
            viz.save_pixels(viz.grid_pixels(picture.images, picture.ncols, SCALE),
                            self._path(final_picture_file(name, what)))
        frames = [self._path(epoch_picture_file(name, "", e))
                  for e in range(1, len(history.per_epoch_time) + 1)]
        frames = [f for f in frames if os.path.exists(f)]
        if frames:
            viz.save_gif(frames, self._path(f"{name}_generate_animation.gif"))
        self.write_history(history)
        if self.task.metric_units:
            viz.plot_panels({k: history.metrics[k] for k in self.task.metric_units},
                            self._path(f"{name}_curves.png"), ylabels=self.task.metric_units,
                            title=self.task.title())

    def close(self) -> None:
        if self.main:
            self.board.close()
