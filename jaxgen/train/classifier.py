"""The evaluation classifier as a :class:`~jaxgen.train.task.Task`, trained by the shared loop.

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
from jaxgen.config import POSITIVE, POSITIVE_INT, UNIT_INTERVAL, inherited, setting
from jaxgen.metrics.features import FeatureExtractor
from jaxgen.models.classifier import Classifier
from jaxgen.train.task import Task, TrainConfig
from jaxgen.workdir import write_atomically

NUM_CLASSES = 10
REPORT = "classifier.json"  # written beside the checkpoints after training


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(TrainConfig):
    epochs: int = inherited(TrainConfig, "epochs", 10)
    batch_size: int = inherited(TrainConfig, "batch_size", 128)
    lr: float = setting(1e-3, "Adam learning rate", POSITIVE)
    dropout: float = setting(0.5, "dropout rate on the feature layer", UNIT_INTERVAL)
    feature_dim: int = setting(128, "size of the feature layer the metrics use", POSITIVE_INT)


class ClassifierModel(struct.PyTreeNode):
    params: Any
    opt_state: Any


class ClassifierTask(Task):
    name = "Classifier"
    config_class = ClassifierConfig
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

    def feature_extractor(self, params: Any, mesh, **kwargs) -> FeatureExtractor:
        """The metrics' view of this classifier with ``params``: features and probabilities of
        many images over ``mesh`` (keyword arguments go to FeatureExtractor)."""
        return FeatureExtractor(self.features_and_logits, params, mesh,
                                dataset=self.config.dataset,
                                feature_dim=self.config.feature_dim, **kwargs)


def write_report(task: ClassifierTask, model: ClassifierModel, test_images: np.ndarray,
                 test_labels: np.ndarray, workdir: str, num_train: int, epoch: int,
                 mesh) -> dict:
    """Measures the test accuracy and writes ``classifier.json`` (process 0); returns it."""
    extractor = task.feature_extractor(model.params, mesh, directory=os.path.abspath(workdir))
    _, probs = extractor.embed(test_images)
    report = {"dataset": task.config.dataset,
              "test_accuracy": float(np.mean(np.argmax(probs, -1) == test_labels)),
              "num_test": len(test_labels), "feature_dim": task.config.feature_dim,
              "num_train": num_train, "epochs": epoch}
    if parallel.is_main_process():
        with write_atomically(os.path.join(workdir, REPORT)) as f:
            json.dump(report, f, indent=2)
    return report
