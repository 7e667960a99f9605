"""Checkpoints written before settings were declared once (tests/fixtures/vae_run_v0, a tiny VAE
run of jaxgen 0.1.0 with its state and samples as that version computed them) still restore,
sample and resume."""

import os
import shutil

import jax
import numpy as np
from helpers import synthetic_images

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
