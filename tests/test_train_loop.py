"""The shared training core: resume, checkpoints, config checks, NaN stop, device counts."""

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
from helpers import WIDTH, host_leaves

from jaxgen import parallel
from jaxgen.errors import JaxgenError
from jaxgen.keys import named_key
from jaxgen.runs.restore import restore_run, sample_images
from jaxgen.train import loop
from jaxgen.train.gan import GANConfig, GANTask
from jaxgen.train.task import Task, TrainConfig

CONFIG = GANConfig(epochs=2, batch_size=16, log_every=2, width=WIDTH)


def _train(workdir, images, config=CONFIG, n_devices=1, task=None, logs=None, **kwargs):
    mesh = parallel.make_mesh(jax.devices()[:n_devices])
    log = logs.append if logs is not None else (lambda _: None)
    return loop.train(task or GANTask(config), images, str(workdir), mesh, log=log, **kwargs)


def test_a_fresh_state_on_eight_devices_is_the_state_of_one_on_each():
    """The loop creates a run's first state once and copies it to every device of the mesh:
    each device holds, bit for bit, the state computed on one device alone."""
    from jaxgen.train.state import initial_state, initial_state_on

    task = GANTask(CONFIG)
    mesh = parallel.make_mesh(jax.devices()[:8])
    with jax.set_mesh(mesh):
        state = initial_state_on(task, mesh)
    alone = jax.jit(lambda: initial_state(task))()
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(alone)):
        assert x.sharding == parallel.replicated(mesh) and len(x.addressable_shards) == 8
        for shard in x.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(y))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_images):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    state, history = _train(workdir, tiny_images)
    return workdir, host_leaves(state), history


@pytest.fixture(scope="module")
def first_epoch(tmp_path_factory, tiny_images):
    """The same run stopped after epoch 1; tests go on from copies of it."""
    workdir = tmp_path_factory.mktemp("first_epoch")
    _train(workdir, tiny_images, GANConfig(**{**CONFIG.to_dict(), "epochs": 1}))
    return workdir


def _copy(workdir, tmp_path):
    return shutil.copytree(workdir, tmp_path / "run")


def test_resume_is_bit_identical(uninterrupted, first_epoch, tiny_images, tmp_path):
    _, expected, full_history = uninterrupted
    workdir = _copy(first_epoch, tmp_path)
    logs = []
    state, history = _train(workdir, tiny_images, logs=logs)
    assert any("Resuming from the checkpoint of epoch 1" in line for line in logs)
    for a, b in zip(host_leaves(state), expected):
        np.testing.assert_array_equal(a, b)
    assert history.metrics == full_history.metrics  # the same losses, step for step
    assert len(history.per_epoch_time) == 2


def test_outputs_of_a_run(uninterrupted):
    workdir, _, history = uninterrupted
    for name in ("GAN_epoch001.png", "GAN_epoch002.png", "GAN_generate_animation.gif",
                 "GAN_loss.png", "GAN_history.json", "metrics.jsonl", "config.json"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    saved = json.load(open(os.path.join(workdir, "GAN_history.json")))
    assert set(saved) == {"D_loss", "G_loss", "per_epoch_time", "total_time"}
    assert len(saved["D_loss"]) == 8 and saved["D_loss"] == history.metrics["D_loss"]
    assert saved["total_time"][0] >= sum(saved["per_epoch_time"])
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [(r["epoch"], r.get("step")) for r in rows] == [
        (1, 2), (1, 4), (1, None), (2, 2), (2, 4), (2, None)]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]


def test_restore_on_another_device_count(uninterrupted):
    workdir, expected, _ = uninterrupted
    _, state8 = restore_run(str(workdir), devices=jax.devices()[:8])
    assert len(jax.tree.leaves(state8)[0].sharding.device_set) == 8
    for a, b in zip(host_leaves(state8), expected):
        np.testing.assert_array_equal(a, b)
    one = sample_images(str(workdir), 6, seed=3, devices=jax.devices()[:1])
    eight = sample_images(str(workdir), 6, seed=3, devices=jax.devices()[:8])
    assert one.shape == (6, 28, 28, 1) and -1 <= one.min() and one.max() <= 1
    np.testing.assert_allclose(one, eight, atol=1e-5)


def test_conflicting_config_is_refused_and_nothing_is_touched(uninterrupted, tiny_images):
    workdir, _, _ = uninterrupted
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    mtime = os.path.getmtime(os.path.join(workdir, "GAN_history.json"))
    conflicting = GANConfig(**{**CONFIG.to_dict(), "epochs": 3, "seed": 7, "lr_g": 1e-3})
    with pytest.raises(JaxgenError, match=r"seed=0 \(this command: 7\).*lr_g"):
        _train(workdir, tiny_images, conflicting)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
    assert os.path.getmtime(os.path.join(workdir, "GAN_history.json")) == mtime


def test_nothing_to_do_when_already_trained(uninterrupted, tiny_images):
    workdir, expected, _ = uninterrupted
    logs = []
    state, _ = _train(workdir, tiny_images, logs=logs)
    assert any("already holds 2 epochs" in line for line in logs)
    for a, b in zip(host_leaves(state), expected):
        np.testing.assert_array_equal(a, b)


def _corrupt(checkpoint_dir):
    for root, _, files in os.walk(os.path.join(checkpoint_dir, "state")):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(uninterrupted, tiny_images,
                                                                  tmp_path):
    workdir, expected, _ = uninterrupted
    workdir = _copy(workdir, tmp_path)
    _corrupt(workdir / "checkpoints" / "2")
    logs = []
    state, _ = _train(workdir, tiny_images, logs=logs)
    assert any("checkpoint of epoch 2 cannot be read" in line for line in logs)
    assert any("moved the unreadable checkpoint of epoch 2" in line for line in logs)
    assert any("Resuming from the checkpoint of epoch 1" in line for line in logs)
    assert len(os.listdir(workdir / "checkpoints-corrupt")) == 1  # kept, not deleted
    for a, b in zip(host_leaves(state), expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_checkpoint_with_truncated_arrays_is_one_clean_warning(uninterrupted, tiny_images,
                                                                 tmp_path):
    """The array chunks cut short, the metadata intact: tensorstore's error, which appends a
    pointer to its details and a method's repr, becomes one warning line naming the cause, and
    orbax's other reads, abandoned, print no "Exception ignored" tracebacks."""
    workdir, expected, _ = uninterrupted
    workdir = _copy(workdir, tmp_path)
    chunks = os.path.join(workdir, "checkpoints", "2", "state", "ocdbt.process_0", "d")
    for name in os.listdir(chunks):
        with open(os.path.join(chunks, name), "r+b") as f:
            f.truncate(10)
    logs = []
    state, _ = _train(workdir, tiny_images, logs=logs)
    (warning,) = [line for line in logs if "cannot be read" in line]
    assert warning.startswith("warning: checkpoint of epoch 2 cannot be read (")
    assert "<bound method" not in warning and "TensorStore details" not in warning
    assert len(warning) < 320 and "\n" not in warning
    for a, b in zip(host_leaves(state), expected):  # resumed from epoch 1, trained epoch 2 again
        np.testing.assert_array_equal(a, b)


def test_unparsable_orbax_timestamps_are_one_warning_not_an_error(uninterrupted, tiny_images,
                                                                  tmp_path, caplog):
    workdir, expected, _ = uninterrupted
    workdir = _copy(workdir, tmp_path)
    info = os.path.join(workdir, "checkpoints", "2", "_CHECKPOINT_METADATA")
    with open(info, "w") as f:
        f.write("garbage")
    with caplog.at_level("WARNING"):
        state, _ = _train(workdir, tiny_images)  # nothing to train: epoch 2 restores
        restore_run(str(workdir), devices=jax.devices()[:1])  # opened again: said once
    about = [r for r in caplog.records if info in r.getMessage()]
    assert [r.levelname for r in about] == ["WARNING"], [r.getMessage() for r in about]
    assert "\n" not in about[0].getMessage()
    for a, b in zip(host_leaves(state), expected):
        np.testing.assert_array_equal(a, b)


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(first_epoch, tiny_images,
                                                             tmp_path):
    workdir = _copy(first_epoch, tmp_path)
    _corrupt(workdir / "checkpoints" / "1")
    with pytest.raises(JaxgenError,
                       match="none of the checkpoints .* can be read.*nothing was moved"):
        _train(workdir, tiny_images)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["1"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(first_epoch, tiny_images, tmp_path):
    workdir = _copy(first_epoch, tmp_path)

    class NaNAtEpoch2(GANTask):
        def train_step(self, model, images, key):
            model, metrics = super().train_step(model, images, key)
            metrics["G_loss"] = metrics["G_loss"] * np.nan
            return model, metrics

    with pytest.raises(JaxgenError, match=r"G_loss became nan at epoch 2, step 2; .*epoch 1"):
        _train(workdir, tiny_images, task=NaNAtEpoch2(CONFIG))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["1"]
    history = json.load(open(workdir / "GAN_history.json"))
    assert len(history["G_loss"]) == 4  # epoch 1's only


def test_several_steps_per_call_train_the_same_gan(tiny_images, tmp_path):
    """A lax.scan of 3 steps per call (4 steps an epoch: a call of 3, then one of 1) against one
    step per call, both with jaxgen's compiler options. What the loop feeds each step, and that
    each step starts from the state the step before left, are compared exactly below
    (test_every_step_gets_its_batch_key_and_state); here, that the GAN trains the same.

    The two programs round differently, and GAN training amplifies rounding from step to step:
    step 1 (the same state, batch and key; no update yet) is compared closely, all 8 steps
    within a bound that rounding changes stay well inside and a scan that gave every step of a
    call the call's first key, batch or state exceeds (docs/testing.md, tolerances: at the
    reference's width, for which that bound was set)."""
    full = GANConfig(**{**CONFIG.to_dict(), "width": 1.0})
    _, expected = _train(tmp_path / "one", tiny_images, full)
    _, history = _train(tmp_path / "three", tiny_images,
                        GANConfig(**{**full.to_dict(), "steps_per_call": 3}))
    for k in ("D_loss", "G_loss"):
        assert len(history.metrics[k]) == len(expected.metrics[k]) == 8
        np.testing.assert_allclose(history.metrics[k][0], expected.metrics[k][0], rtol=1e-5)
        np.testing.assert_allclose(history.metrics[k], expected.metrics[k], rtol=6e-2)


class _BatchProbe(Task):
    """Trains nothing. Reports for each step an order-sensitive integer checksum of the batch
    it is fed, the two words of its key, and a chain: the state's integer, which each step
    updates from the one the step before left (uint32 arithmetic, exact on any CPU)."""

    name = "PROBE"
    metric_names = ("checksum", "key0", "key1", "chain")

    def __init__(self, config):
        self.config = config

    def init(self, key):
        return {"chain": jax.numpy.zeros((), jax.numpy.uint32)}

    def train_step(self, model, images, key):
        jnp = jax.numpy
        pixels = jnp.round((images + 1) * 127.5).astype(jnp.int32).sum(axis=(1, 2, 3))
        checksum = jnp.sum(pixels * (jnp.arange(images.shape[0]) + 1))
        words = jax.random.key_data(key).astype(jnp.uint32)
        chain = model["chain"] * jnp.uint32(16777619) + checksum.astype(jnp.uint32)
        return {"chain": chain}, {"checksum": checksum, "key0": words[0], "key1": words[1],
                                  "chain": chain}


def test_every_step_gets_its_batch_key_and_state(tiny_images, tmp_path):
    """Each step is fed the epoch's shuffled batch, the key of its global step and the state
    the step before left: on 1 and 8 devices, one step per call or a scan of 3 (a call of 3,
    then one of 1, each epoch). Compared exactly."""
    config = TrainConfig(epochs=2, batch_size=16, seed=3)
    expected = {"checksum": [], "key0": [], "key1": [], "chain": []}
    chain = 0
    for epoch in (1, 2):
        key = named_key(jax.random.PRNGKey(3), "shuffle", epoch)
        perm = np.asarray(jax.random.permutation(key, len(tiny_images)))
        for i in range(4):
            batch = tiny_images[perm[16 * i:16 * (i + 1)]].astype(np.int64)
            checksum = int(np.sum(batch.sum(axis=(1, 2, 3)) * np.arange(1, 17)))
            step = 4 * (epoch - 1) + i
            words = np.asarray(named_key(jax.random.PRNGKey(3), "noise", step))
            chain = (chain * 16777619 + checksum) % 2**32
            for name, value in (("checksum", checksum), ("key0", int(words[0])),
                                ("key1", int(words[1])), ("chain", chain)):
                expected[name].append(value)
    # The batches and the keys differ, so the check can tell them apart.
    assert len(set(expected["checksum"])) == 8 and len(set(expected["key0"])) == 8
    for n, steps_per_call in ((1, 1), (8, 1), (1, 3), (8, 3)):
        probe = _BatchProbe(TrainConfig(**{**config.to_dict(),
                                                "steps_per_call": steps_per_call}))
        _, history = _train(tmp_path / f"{n}x{steps_per_call}", tiny_images, n_devices=n,
                            task=probe)
        got = {k: [int(v) for v in history.metrics[k]] for k in expected}
        assert got == expected, (n, steps_per_call)


class _LabelledProbe(_BatchProbe):
    """Reports an order-sensitive checksum of the labels fed beside each batch."""

    name = "LABELPROBE"
    metric_names = ("checksum",)
    needs_labels = True

    def train_step(self, model, images, key, labels):
        jnp = jax.numpy
        return model, {"checksum": jnp.sum(labels * (jnp.arange(images.shape[0]) + 1))}


def test_labels_travel_with_their_images_and_hooks_run_every_epoch(tiny_images, tmp_path):
    config = TrainConfig(epochs=2, batch_size=16, seed=5)
    labels = np.arange(len(tiny_images), dtype=np.int32) * 3 + 1  # label i belongs to image i
    expected = []
    for epoch in (1, 2):
        key = named_key(jax.random.PRNGKey(5), "shuffle", epoch)
        perm = np.asarray(jax.random.permutation(key, len(tiny_images)))
        for i in range(4):
            expected.append(int(np.sum(labels[perm[16 * i:16 * (i + 1)]] * np.arange(1, 17))))
    for n, steps_per_call in ((1, 1), (8, 1), (8, 3)):
        calls = []
        hook = lambda task, state, epoch, workdir: calls.append((epoch, int(state.step)))  # noqa
        probe = _LabelledProbe(TrainConfig(**{**config.to_dict(),
                                                   "steps_per_call": steps_per_call}))
        _, history = _train(tmp_path / f"{n}x{steps_per_call}", tiny_images, n_devices=n,
                            task=probe, labels=labels, epoch_hooks=[hook])
        assert [int(v) for v in history.metrics["checksum"]] == expected, (n, steps_per_call)
        assert calls == [(1, 4), (2, 8)]
    with pytest.raises(JaxgenError, match="one label per image"):
        _train(tmp_path / "missing", tiny_images, task=_LabelledProbe(config))


def test_images_that_are_not_the_datasets_kind_are_refused(tiny_images, tmp_path):
    """Float images, or images of another size, are one clear error before anything is written
    (scaled twice, or trained at the wrong shape, they would be recorded as the dataset)."""
    mesh = parallel.make_mesh(jax.devices()[:1])
    for images, got in ((tiny_images.astype(np.float32) / 255, "float32 of shape (64, 28, 28, 1)"),
                        (tiny_images[:, :14], "uint8 of shape (64, 14, 28, 1)")):
        with pytest.raises(JaxgenError, match=r"uint8 of shape \(N, 28, 28, 1\); got "
                           + re.escape(got)):
            loop.train(GANTask(GANConfig(epochs=1, batch_size=16)), images,
                       str(tmp_path / "w"), mesh)
    assert not (tmp_path / "w").exists()


def _files(workdir) -> dict:
    """Every file's bytes but the lock's, which records who last opened the workdir."""
    out = {}
    for root, _, names in os.walk(workdir):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, workdir)] = f.read()
    out.pop(".lock", None)
    return out


def test_fewer_epochs_than_the_run_has_are_refused_and_nothing_changes(uninterrupted,
                                                                        tiny_images, tmp_path):
    """--epochs 1 on a run of 2 epochs would rewrite config.json, metrics.jsonl and the
    pictures from a shorter history: refused, every file left byte for byte."""
    workdir = _copy(uninterrupted[0], tmp_path)
    before = _files(workdir)
    with pytest.raises(JaxgenError, match=r"holds a run of 2 epochs, more than --epochs 1, and "
                       r"a run is never shortened; pass --epochs 2 .*Nothing was changed\."):
        _train(workdir, tiny_images, GANConfig(**{**CONFIG.to_dict(), "epochs": 1}))
    assert _files(workdir) == before


def test_profile_steps_a_resumed_run_has_trained_are_refused(uninterrupted, tiny_images,
                                                             tmp_path):
    """Steps already trained never run again: a profile of them would silently trace nothing."""
    workdir = _copy(uninterrupted[0], tmp_path)
    before = _files(workdir)
    with pytest.raises(JaxgenError, match=r"--profile-steps 3\.\.10 starts within the steps "
                       r"this run has trained \(1\.\.8, 2 epochs\).*pass steps after 8\."):
        _train(workdir, tiny_images, GANConfig(**{**CONFIG.to_dict(), "epochs": 3}),
               profile_steps=(3, 10))
    assert _files(workdir) == before
