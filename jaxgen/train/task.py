"""What a model is to the training core: a :class:`Task` and its :class:`TrainConfig`.

A model plugs in as a Task: how to initialise its pytree, one pure train step on a batch of
images, and the pictures to draw after each epoch (as arrays: the loop writes every file).
Its config extends TrainConfig with the model's own settings, each declared once
(``jaxgen.config.setting``).
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
from typing import Any, Optional

import jax

from jaxgen.config import POSITIVE_INT, SEED, Settings, setting
from jaxgen.data import DATASETS
from jaxgen.errors import JaxgenError

PRECISIONS = ("default", "high", "highest")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Settings):
    """Settings every experiment has. Subclasses add the model's; all are saved with
    checkpoints, and a resumed run may change only those marked resumable."""

    dataset: str = setting("mnist", "dataset to train on", choices=sorted(DATASETS))
    epochs: int = setting(50, "epochs to train in total; rerunning with more continues",
                          POSITIVE_INT, resumable=True)
    batch_size: int = setting(64, "global batch size, split over all devices", POSITIVE_INT)
    seed: int = setting(0, "root of every random number of the run", SEED)
    log_every: int = setting(100, "steps between log lines", POSITIVE_INT, resumable=True)
    keep_checkpoints: int = setting(3, "how many of the newest per-epoch checkpoints to keep",
                                    POSITIVE_INT, resumable=True)
    # A lax.scan over steps, the data resident on the devices. None: auto, a whole epoch.
    steps_per_call: Optional[int] = setting(
        None, "train steps per compiled call (a lax.scan), or auto: one program per epoch, "
              "whose log lines come when it ends (default: auto; 1 prints them as the steps "
              "run); the same steps, rounded differently", POSITIVE_INT, resumable=True,
        metavar="N|auto", parse=lambda text: None if text == "auto" else _positive_int(text))
    precision: str = setting(
        "default", "float32 matrix products and convolutions of the train step "
        "(jax.default_matmul_precision): default (the platform's fastest: TF32 on recent NVIDIA "
        "GPUs, bfloat16 passes on TPUs; float32 on CPUs), high, or highest (float32 throughout)",
        choices=PRECISIONS, resumable=True, absent="default")
    num_seeds: int = setting(
        1, "independent runs trained together in one compiled program, of seeds --seed, "
           "--seed + 1, ... (a seed ensemble: docs/library.md)", POSITIVE_INT, absent=1)

    def validate(self) -> None:
        super().validate()
        if self.seed + self.num_seeds > 2 ** 32:
            raise JaxgenError(f"--num-seeds {self.num_seeds} from --seed {self.seed} reaches "
                              f"seed {self.seed + self.num_seeds - 1}, above {2 ** 32 - 1}; "
                              "pass a lower --seed.")


def _positive_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {text!r}") \
            from None


def resolve_steps_per_call(config: TrainConfig, steps_per_epoch: int) -> int:
    """The steps each compiled call runs: ``config.steps_per_call``, or for auto (None) the
    whole epoch, on every platform. On an accelerator, dispatching each small step from Python
    would cost more than the step; on CPU the epoch program runs as fast as single steps
    (docs/performance.md), so tests on CPU run the program an accelerator runs."""
    if config.steps_per_call is not None:
        return config.steps_per_call
    return steps_per_epoch


@dataclasses.dataclass(frozen=True)
class Picture:
    """Images a task draws, shown as one grid of ``ncols`` columns."""

    images: Any  # (N, H, W, C) in [-1, 1]
    ncols: int = 8
    # A seed ensemble's grid after each epoch shows this many leading rows of each run's.
    ensemble_rows: int = 1


class Task(abc.ABC):
    """A model as the training core sees it."""

    name: str  # file prefix and checkpoint tag, e.g. "GAN"
    config_class: type  # the TrainConfig subclass a checkpoint's config is read back as
    metric_names: tuple[str, ...]  # scalars the train step returns, logged as "name: value"
    config: TrainConfig
    # True for supervised tasks (a classifier): train_step then also gets the batch's int32 labels.
    needs_labels: bool = False
    # True when train_step also takes ``step_in_epoch``, the step's 0-based index in its epoch.
    needs_step_in_epoch: bool = False
    # A conditional generative model's number of categories: sample_images then takes labels.
    conditional_classes: int = 0
    # The metrics drawn in panels of their own (``<TASK>_curves.png``), with their units.
    metric_units: dict[str, str] = {}

    @abc.abstractmethod
    def init(self, key: jax.Array) -> Any:
        """The model pytree for a fresh run."""

    @abc.abstractmethod
    def train_step(self, model: Any, images: jax.Array, key: jax.Array,
                   labels: Optional[jax.Array] = None) -> tuple[Any, dict]:
        """One update on a global batch of images in [-1, 1], shape (B, H, W, C), and their
        labels (B,) when ``needs_labels`` (the loop passes ``labels=`` and ``step_in_epoch=`` by
        keyword). Pure."""

    def sample_images(self, model: Any, key: jax.Array, num: int,
                      labels: Optional[jax.Array] = None) -> jax.Array:
        """``num`` images in [-1, 1], shape (num, H, W, C), drawn from a generative model (GAN:
        z from the prior through G; VAE: z from the prior through the decoder's mean); a
        conditional model draws category ``labels[i]`` for image i (uniform ones if None)."""
        raise NotImplementedError(f"{self.name} is not a generative model")

    def sampling_model(self, model: Any) -> Any:
        """The model that draws samples, prepared once for a batch of draws (a GAN with
        ``--g-ema``: its moving average, with BatchNorm statistics of its own); ``model`` itself
        for most tasks. :func:`jaxgen.runs.restore.draw_samples` prepares it once and draws every
        chunk from it."""
        return model

    @classmethod
    def is_generative(cls) -> bool:
        """Whether the task draws samples (it defines ``sample_images``)."""
        return cls.sample_images is not Task.sample_images

    def update_after_epoch(self, model: Any, metrics: dict) -> tuple[Any, list[str]]:
        """The model after an epoch whose per-step ``metrics`` (numpy arrays, name -> (steps,))
        are known, and lines to log (e.g. a learning rate that changed); before the checkpoint,
        on every process. Most tasks change nothing."""
        return model, []

    def pictures(self, model: Any, rng: jax.Array) -> dict[str, Picture]:
        """What to draw after every epoch, ``{what: Picture}`` ("" for the samples, say
        "reconstruction" for others), from the model and the run's key ``rng`` (fixed noise
        comes from it). Pure; runs on every process, and the loop writes the files
        (``<TASK>[_what]_epochNNN.png``) and TensorBoard's images on the main one."""
        return {}

    def final_pictures(self, model: Any, rng: jax.Array) -> dict[str, Picture]:
        """What to draw once after the last epoch (``<TASK>_<what>.png``), as ``pictures``."""
        return {}

    def title(self) -> str:
        """The title of the run's curves."""
        return f"{self.name} on {self.config.dataset}"
