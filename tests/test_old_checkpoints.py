"""Checkpoints written before settings were declared once (tests/fixtures/vae_run_v0, a tiny VAE
run of jaxgen 0.1.0 with its state and samples as that version computed them) still restore,
sample and resume."""

import os
import shutil

import jax
import numpy as np
from helpers import WIDTH, synthetic_images

from jaxgen import parallel
from jaxgen.runs.restore import restore_run, sample_images
from jaxgen.train import loop
from jaxgen.train.vae import VAEConfig, VAETask

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "vae_run_v0")


def test_an_old_checkpoint_restores_exactly():
    task, state = restore_run(FIXTURE, devices=jax.devices()[:1])
    assert isinstance(task, VAETask) and task.config.hidden == (16,)
    expected = np.load(os.path.join(FIXTURE, "expected_state.npz"))
    leaves = jax.tree_util.tree_flatten_with_path(parallel.to_host(state))[0]
    assert sorted(jax.tree_util.keystr(p) for p, _ in leaves) == sorted(expected.files)
    for path, leaf in leaves:
        np.testing.assert_array_equal(leaf, expected[jax.tree_util.keystr(path)])


def test_an_old_checkpoint_samples_as_it_did():
    # A 16-unit MLP's float32 rounding differs between CPUs in the last bits.
    np.testing.assert_allclose(sample_images(FIXTURE, 8, seed=0),
                               np.load(os.path.join(FIXTURE, "expected_samples.npy")),
                               atol=1e-5)


def test_an_old_run_resumes(tmp_path):
    workdir = shutil.copytree(FIXTURE, tmp_path / "run")
    config = VAEConfig(epochs=2, batch_size=16, latent_dim=3, hidden=(16,), log_every=2, seed=7)
    logs = []
    state, history = loop.train(VAETask(config), synthetic_images(64)[0][..., None],
                                str(workdir), parallel.make_mesh(jax.devices()[:1]),
                                log=logs.append)
    assert any("Resuming from the checkpoint of epoch 1" in line for line in logs)
    assert int(state.step) == 8 and len(history.per_epoch_time) == 2


def test_a_gan_checkpoint_without_the_extra_state_restores_and_resumes(tiny_images, tmp_path):
    """GAN checkpoints written while the vanilla GAN's model had no ``extra`` (G and D only)
    restore onto today's model, whose ``extra`` is empty, and resume as the run would have."""
    from typing import Any

    from flax import struct
    from helpers import host_leaves

    from jaxgen.checkpoint import Checkpoints
    from jaxgen.train.gan import GANConfig, GANTask
    from jaxgen.workdir import checkpoint_dir

    class TwoNetworks(struct.PyTreeNode):  # the model's layout before
        g: Any
        d: Any

    mesh = parallel.make_mesh(jax.devices()[:1])
    config = GANConfig(epochs=1, batch_size=16, log_every=2, width=WIDTH)
    now, before = tmp_path / "now", tmp_path / "before"
    state, _ = loop.train(GANTask(config), tiny_images, str(now), mesh, log=lambda _: None)
    meta = Checkpoints(checkpoint_dir(str(now)), read_only=True).read_meta(1)
    old = Checkpoints(checkpoint_dir(str(before)))
    old.save(1, state.replace(model=TwoNetworks(state.model.g, state.model.d)), meta)
    old.wait()
    old.close()
    task, restored = restore_run(str(before), devices=jax.devices()[:1])
    assert restored.model.extra == {}
    assert all(np.array_equal(a, b) for a, b in zip(host_leaves(restored), host_leaves(state)))
    longer = GANConfig(epochs=2, batch_size=16, log_every=2, width=WIDTH)
    resumed = [loop.train(GANTask(longer), tiny_images, str(w), mesh, log=lambda _: None)[0]
               for w in (now, before)]
    assert all(np.array_equal(a, b)
               for a, b in zip(host_leaves(resumed[0]), host_leaves(resumed[1])))
