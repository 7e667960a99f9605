"""docs/library.md's "Train from Python" block runs as written (on tiny data), and a task of a
user's own, registered by name, is restored like the built-in ones."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import REPO, WIDTH, write_idx_dataset

from jaxgen.errors import JaxgenError
from jaxgen.runs import registry
from jaxgen.runs.restore import restore_run
from jaxgen.train import loop
from jaxgen.train.task import Task, TrainConfig


def _python_block(path: str, heading: str) -> str:
    with open(path) as f:
        text = f.read()
    section = text.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_train_from_python_runs_as_written(tmp_path, monkeypatch):
    code = _python_block(os.path.join(REPO, "docs", "library.md"), "## Train from Python")
    data_dir = write_idx_dataset(str(tmp_path / "idx"), n_train=144, n_test=144)
    # the same block at a tiny size: its data, one epoch of two steps of the tests' narrow GAN
    # on one device (the sharding tests compare eight with one), 136 samples (the fewest above
    # the classifier's 128 features that the scores take)
    classifier = os.path.join(REPO, "experiments", "results", "classifier_fashion_mnist")
    for old, new in (('"/usr/share/datasets/fashion-mnist"', repr(data_dir)),
                     ("epochs=1)", f"epochs=1, batch_size=72, width={WIDTH})"),
                     ("parallel.make_mesh()", "parallel.make_mesh(jax.devices()[:1])"),
                     ("num_samples=10000", "num_samples=136"),
                     ('"experiments/results/classifier_fashion_mnist"', repr(classifier))):
        assert code.count(old) == 1, old
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace = {"jax": jax}
    exec(compile(code, "docs/library.md", "exec"), namespace)
    assert namespace["images"].shape == (64, 28, 28, 1)
    assert int(namespace["state"].step) == 2
    assert np.isfinite(namespace["scores"]["fid"])
    assert (tmp_path / "runs" / "gan" / "eval.json").exists()


class _Mean(Task):
    """The smallest task: a running mean of the images, one parameter."""

    name = "MEAN_TEST"
    config_class = TrainConfig
    metric_names = ("loss",)

    def __init__(self, config):
        self.config = config
        self.tx = optax.sgd(0.5)

    def init(self, key):
        params = jnp.zeros(())
        return {"params": params, "opt": self.tx.init(params)}

    def train_step(self, model, images, key, labels=None):
        loss, grad = jax.value_and_grad(lambda p: jnp.mean((images - p) ** 2))(model["params"])
        updates, opt = self.tx.update(grad, model["opt"])
        return {"params": optax.apply_updates(model["params"], updates), "opt": opt}, \
            {"loss": loss}


def test_a_registered_task_of_ones_own_is_restored_by_name(tiny_images, tmp_path):
    workdir = str(tmp_path / "mean")
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    state, _ = loop.train(_Mean(TrainConfig(epochs=1, batch_size=16)), tiny_images, workdir,
                          mesh, log=lambda _: None)
    with pytest.raises(JaxgenError, match="unknown kind of run.*register_task"):
        restore_run(workdir, devices=jax.devices()[:1])
    registry.register_task(_Mean)
    try:
        task, restored = restore_run(workdir, devices=jax.devices()[:1])
        with pytest.raises(ValueError, match="'MEAN_TEST' is taken by _Mean"):
            registry.register_task(type("Other", (_Mean,), {}))
    finally:
        registry.unregister_task(_Mean.name)
    assert isinstance(task, _Mean) and task.config.batch_size == 16
    assert float(restored.model["params"]) == float(state.model["params"])
