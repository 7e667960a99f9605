"""The evaluation classifier as a :class:`~jaxgen.train.loop.Task`, trained by the shared loop.

A supervised task (``needs_labels``): the loop hands the train step the batch's labels. One step
is one Adam step on the mean softmax cross-entropy of the logits, with dropout on the features;
dropout's key is the step's key from the loop, so training is deterministic given the seed.
After training, its test accuracy is written beside the checkpoints in ``classifier.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxgen import parallel
from jaxgen.errors import JaxgenError
from jaxgen.models.classifier import Classifier
from jaxgen.train.loop import Task, TrainConfig

NUM_CLASSES = 10
REPORT = "classifier.json"  # written beside the checkpoints after training


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(TrainConfig):
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    dropout: float = 0.5
    feature_dim: int = 128  # size of the feature layer the metrics use

    def validate(self) -> None:
        super().validate()
        if not self.lr > 0:
            raise JaxgenError(f"--lr must be positive, got {self.lr}.")
        if not 0 <= self.dropout < 1:
            raise JaxgenError(f"--dropout must be in [0, 1), got {self.dropout}.")
        if not isinstance(self.feature_dim, int) or self.feature_dim < 1:
            raise JaxgenError(f"--feature-dim must be a positive integer, got "
                              f"{self.feature_dim}.")


class ClassifierModel(struct.PyTreeNode):
    params: Any
    opt_state: Any


class ClassifierTask(Task):
    name = "Classifier"
    metric_names = ("loss", "accuracy")
    needs_labels = True

    def __init__(self, config: ClassifierConfig):
        self.config = config
        self.module = Classifier(num_classes=NUM_CLASSES, feature_dim=config.feature_dim,
                                 dropout_rate=config.dropout)
        self.tx = optax.adam(config.lr)

    def init(self, key: jax.Array) -> ClassifierModel:
        params = self.module.init(key, jnp.zeros((1, 28, 28, 1)))["params"]
        return ClassifierModel(params, self.tx.init(params))

    def train_step(self, model: ClassifierModel, images: jax.Array, key: jax.Array,
                   labels: Optional[jax.Array] = None):
        def loss_fn(params):
            logits = self.module.apply({"params": params}, images, train=True,
                                       rngs={"dropout": key})
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(model.params)
        updates, opt_state = self.tx.update(grads, model.opt_state, model.params)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        return (ClassifierModel(optax.apply_updates(model.params, updates), opt_state),
                {"loss": loss, "accuracy": accuracy})

    def features_and_logits(self, params: Any, images: jax.Array):
        """Inference mode: the feature layer (N, feature_dim) and the logits (N, classes)."""
        return self.module.apply({"params": params}, images,
                                 method=Classifier.features_and_logits)


def write_report(task: ClassifierTask, model: ClassifierModel, test_images: np.ndarray,
                 test_labels: np.ndarray, workdir: str, num_train: int, epoch: int,
                 mesh) -> dict:
    """Measures the test accuracy and writes ``classifier.json`` (process 0); returns it."""
    from jaxgen.metrics.features import FeatureExtractor

    extractor = FeatureExtractor(task, model.params, mesh, directory=os.path.abspath(workdir))
    _, probs = extractor.embed(test_images)
    report = {"dataset": task.config.dataset,
              "test_accuracy": float(np.mean(np.argmax(probs, -1) == test_labels)),
              "num_test": len(test_labels), "feature_dim": task.config.feature_dim,
              "num_train": num_train, "epochs": epoch}
    if parallel.is_main_process():
        with open(os.path.join(workdir, REPORT), "w") as f:
            json.dump(report, f, indent=2)
    return report
