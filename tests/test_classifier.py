"""The evaluation classifier: trained by the shared loop, restored from its workdir, its script."""

import json
import os

import jax
import numpy as np
import pytest
from helpers import classifier_config, classifier_flags, run_in_process

from jaxgen import parallel
from jaxgen.errors import JaxgenError
from jaxgen.runs.restore import restore_run
from jaxgen.train import loop
from jaxgen.train.classifier import REPORT, ClassifierConfig, ClassifierTask, write_report

CONFIG = classifier_config()
TINY_FLAGS = classifier_flags()


def top_or_bottom(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: the top half is bright; class 1: the bottom half. Noise everywhere."""
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, 2, n).astype(np.int32)
    images = rng.uniform(0, 60, (n, 28, 28, 1))
    for i, label in enumerate(labels):
        rows = slice(0, 14) if label == 0 else slice(14, 28)
        images[i, rows] += 160
    return images.astype(np.uint8), labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("classifier"))
    images, labels = top_or_bottom(64, seed=0)
    mesh = parallel.make_mesh(jax.devices())
    task = ClassifierTask(CONFIG)
    state, history = loop.train(task, images, workdir, mesh, log=lambda _: None, labels=labels)
    return task, state, history, workdir, mesh


def test_classifier_learns_a_separable_set_through_the_loop(trained):
    task, state, history, workdir, mesh = trained
    test_images, test_labels = top_or_bottom(48, seed=1)
    report = write_report(task, state.model, test_images, test_labels, workdir, num_train=64,
                          epoch=CONFIG.epochs, mesh=mesh)
    assert report["test_accuracy"] == 1.0
    assert history.metrics["loss"][-1] < history.metrics["loss"][0]
    saved = json.load(open(os.path.join(workdir, REPORT)))
    assert saved == {"dataset": "mnist", "test_accuracy": 1.0, "num_test": 48,
                     "feature_dim": 8, "num_train": 64, "epochs": CONFIG.epochs}


def test_restore_gives_the_classifier_back(trained):
    _, state, _, workdir, _ = trained
    task, restored = restore_run(workdir, devices=jax.devices()[:1])
    assert isinstance(task, ClassifierTask) and task.config == CONFIG
    for a, b in zip(jax.tree.leaves(parallel.to_host(restored)),
                    jax.tree.leaves(parallel.to_host(state))):
        np.testing.assert_array_equal(a, b)


def test_features_are_the_penultimate_layer(trained):
    task, state, _, _, _ = trained
    images = top_or_bottom(4, seed=2)[0].astype(np.float32) / 127.5 - 1
    params = parallel.to_host(state.model.params)
    features, logits = task.features_and_logits(params, images)
    assert features.shape == (4, 8) and np.all(np.asarray(features) >= 0)  # after the ReLU
    np.testing.assert_allclose(
        logits, features @ params["head"]["kernel"] + params["head"]["bias"], rtol=1e-5,
        atol=1e-5)
    np.testing.assert_allclose(logits, task.module.apply({"params": params}, images), rtol=1e-6)


def test_dropout_draws_from_the_step_key():
    task = ClassifierTask(ClassifierConfig(dropout=0.5, feature_dim=8))
    model = jax.jit(task.init)(jax.random.PRNGKey(0))
    images, labels = top_or_bottom(4, seed=3)
    images = images.astype(np.float32) / 127.5 - 1
    train_step = jax.jit(task.train_step)
    step = lambda key: jax.tree.leaves(  # noqa: E731
        train_step(model, images, jax.random.PRNGKey(key), labels)[0].params)
    same, again, other = step(1), step(1), step(2)
    assert all(np.array_equal(a, b) for a, b in zip(same, again))
    assert not all(np.array_equal(a, b) for a, b in zip(same, other))


def test_training_without_labels_is_refused(tmp_path):
    images, _ = top_or_bottom(16, seed=0)
    with pytest.raises(JaxgenError, match="pass one label per image"):
        loop.train(ClassifierTask(CONFIG), images, str(tmp_path), parallel.make_mesh())


def test_train_classifier_script_prints_and_stores_its_accuracy(idx_dir, tmp_path, capsys):
    workdir = tmp_path / "cls"
    code, out, err = run_in_process(
        "train_classifier.py", "--data-dir", idx_dir, "--workdir", workdir, "--epochs", 2,
        *TINY_FLAGS, "--log-every", 4, capsys=capsys)
    assert code == 0, err
    report = json.load(open(workdir / REPORT))
    assert set(report) == {"dataset", "test_accuracy", "num_test", "feature_dim", "num_train",
                           "epochs"}
    assert report["num_train"] == 64 and report["num_test"] == 32
    assert report["feature_dim"] == 8 and 0 <= report["test_accuracy"] <= 1
    assert f"Test accuracy: {report['test_accuracy']:.4f} on 32 test images" in out
    assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]


@pytest.mark.parametrize("flag,value,message", [
    ("--dropout", 1.0, "--dropout must be in [0, 1), got 1.0"),
    ("--feature-dim", 0, "--feature-dim must be a positive integer, got 0"),
    ("--lr", 0, "--lr must be positive, got 0.0"),
])
def test_bad_classifier_flags(flag, value, message, idx_dir, tmp_path, capsys):
    code, _, err = run_in_process("train_classifier.py", "--data-dir", idx_dir, "--workdir",
                                  tmp_path / "w", flag, value, capsys=capsys)
    assert code == 2 and f"error: {message}" in err
    assert not (tmp_path / "w").exists()
