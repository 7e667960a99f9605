"""Classifier features and class probabilities of many images: batched, jitted, sharded.

Images go through the classifier in fixed-size batches split over the mesh's devices (the last
batch padded), so one program is compiled whatever the number of images.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import parallel, viz
from jaxgen.checkpoint import Checkpoints
from jaxgen.errors import JaxgenError
from jaxgen.train.loop import checkpoint_dir

CLASSIFIER_TASK = "Classifier"


class FeatureExtractor:
    """A trained classifier's ``embed(images) -> (features, probabilities)`` over ``mesh``."""

    def __init__(self, task, params: Any, mesh, directory: Optional[str] = None,
                 epoch: Optional[int] = None, batch_size: int = 512):
        self.task = task
        self.params = params
        self.mesh = mesh
        self.directory = directory
        self.epoch = epoch
        self.batch_size = math.ceil(batch_size / mesh.size) * mesh.size

        def apply(params, images):
            if images.dtype == jnp.uint8:
                images = images.astype(jnp.float32) / 127.5 - 1.0  # as in training
            features, logits = task.features_and_logits(params, images)
            return features, jax.nn.softmax(logits, axis=-1)

        repl = parallel.replicated(mesh)
        self._apply = jax.jit(apply, in_shardings=(repl, parallel.batch_sharded(mesh)),
                              out_shardings=(repl, repl),
                              compiler_options=parallel.compiler_options(mesh))

    @property
    def dataset(self) -> str:
        return self.task.config.dataset

    @property
    def feature_dim(self) -> int:
        return self.task.config.feature_dim

    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``images`` (N, 28, 28, 1), uint8 in [0, 255] or float in [-1, 1] -> the feature layer
        (N, feature_dim) and the class probabilities (N, classes), float64 numpy."""
        images = np.asarray(images)
        if images.dtype != np.uint8:
            images = images.astype(np.float32)
        sharding = parallel.batch_sharded(self.mesh)
        features, probs = [], []
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            n = len(batch)
            if n < self.batch_size:
                pad = np.zeros((self.batch_size - n,) + batch.shape[1:], batch.dtype)
                batch = np.concatenate([batch, pad])
            # Every process holds all images: each puts the rows of its own devices.
            x = jax.make_array_from_callback(batch.shape, sharding, lambda index: batch[index])
            f, p = parallel.to_host(self._apply(self.params, x))
            features.append(f[:n])
            probs.append(p[:n])
        return (np.concatenate(features).astype(np.float64),
                np.concatenate(probs).astype(np.float64))


def newest_meta(workdir: str, flag: str, fix: str) -> tuple[int, dict]:
    """(epoch, meta) of the newest readable checkpoint in ``workdir``, reading no arrays; a
    JaxgenError naming ``flag`` and ``fix`` when there is none."""
    directory = checkpoint_dir(os.path.abspath(workdir))
    if not os.path.isdir(directory):
        raise JaxgenError(f"{flag} {workdir} holds no checkpoints ({directory} is missing); "
                          f"{fix}.")
    ckpts = Checkpoints(directory, read_only=True)
    try:
        epochs = ckpts.epochs()
        if not epochs:
            raise JaxgenError(f"{flag} {workdir} holds no finished checkpoint yet; {fix}.")
        for epoch in reversed(epochs):  # as restoring does, skip an unreadable newest one
            try:
                return epoch, ckpts.read_meta(epoch)
            except Exception:  # noqa: BLE001 - any failure to read: try the previous one
                continue
        raise JaxgenError(f"none of the checkpoints of {flag} {workdir} can be read; {fix}.")
    finally:
        ckpts.close()


def train_classifier_hint(workdir: str, dataset: str = "DATASET") -> str:
    return (f"train one with python experiments/train_classifier.py --dataset {dataset} "
            f"--workdir {workdir}")


def classifier_meta(classifier_dir: str) -> tuple[int, dict]:
    """The newest checkpoint's (epoch, meta) of a classifier workdir, checked to be one."""
    epoch, meta = newest_meta(classifier_dir, "--classifier",
                              train_classifier_hint(classifier_dir))
    if meta.get("task") != CLASSIFIER_TASK:
        raise JaxgenError(f"--classifier {classifier_dir} holds a {meta.get('task')} run, not a "
                          "classifier; pass the --workdir of experiments/train_classifier.py.")
    return epoch, meta


def load_classifier(classifier_dir: str, devices: Optional[list] = None,
                    batch_size: int = 512) -> FeatureExtractor:
    """The classifier trained in ``classifier_dir`` (its newest checkpoint), replicated over
    ``devices`` (default: all)."""
    from jaxgen.train.restore import restore_run

    epoch, _ = classifier_meta(classifier_dir)
    task, state = restore_run(classifier_dir, devices=devices)
    mesh = parallel.make_mesh(devices)
    return FeatureExtractor(task, state.model.params, mesh,
                            directory=os.path.abspath(classifier_dir), epoch=epoch,
                            batch_size=batch_size)


def quantize(images: np.ndarray) -> np.ndarray:
    """Samples in [-1, 1] -> uint8, as saved to a PNG: the classifier only ever saw 256 levels."""
    return viz.to_uint8(images)
