"""Two processes joined by jax.distributed on 127.0.0.1 compute what one process computes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    WIDTH,
    ScriptProcess,
    assert_gan_models_close,
    free_port,
    synthetic_images,
    write_idx_dataset,
    xla_flags,
)

from jaxgen import data, parallel
from jaxgen.runs.restore import restore_run
from jaxgen.train import loop
from jaxgen.train.gan import GANConfig, GANTask


def _gan(data_dir, workdir, devices_per_process, *extra):
    env = {"XLA_FLAGS": xla_flags(devices_per_process)}
    return ScriptProcess("gan_mnist.py", "--data-dir", data_dir, "--epochs", 1, "--batch-size",
                         16, "--log-every", 1, "--width", WIDTH, "--workdir", workdir, *extra,
                         env=env)


@pytest.fixture(scope="module")
def distributed_runs(tmp_path_factory):
    """16 training images at batch 16: one step of gan_mnist.py on two processes of one device
    each (joined by jax.distributed), and a seed ensemble of two runs on two processes, at the
    same time; meanwhile the same step in this process on two of its devices, as gan_mnist.py
    trains it (the loop, on the same data and settings)."""
    directory = tmp_path_factory.mktemp("distributed")
    data_dir = write_idx_dataset(str(directory / "idx"), n_train=16, n_test=16)
    procs = []
    for run, extra in (("two", ()), ("ensemble", ("--num-seeds", 2))):
        port = free_port()
        procs += [_gan(data_dir, directory / run, 1, "--coordinator-address",
                       f"127.0.0.1:{port}", "--num-processes", 2, "--process-id", i, *extra)
                  for i in range(2)]
    try:
        config = GANConfig(epochs=1, batch_size=16, log_every=1, width=WIDTH)
        loop.train(GANTask(config), data.load_dataset("mnist", data_dir=data_dir),
                   str(directory / "one"), parallel.make_mesh(jax.devices()[:2]),
                   log=lambda _: None)
        *two, e0, e1 = [p.wait() for p in procs]
    finally:  # one that failed leaves the other waiting for it
        for p in procs:
            p.kill()
    return directory, two, (e0, e1)


def _output(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_two_processes_match_one_process(distributed_runs):
    # One step, compared as in test_eight_devices_match_one.
    directory, two, _ = distributed_runs
    outs = [_output(p) for p in two]
    assert "2 cpu device(s) on 2 process(es)" in outs[0]
    assert "Epoch: [ 1] [   1/   1]" in outs[0] and "Epoch:" not in outs[1]  # process 0 logs

    histories = [json.load(open(directory / run / "GAN_history.json")) for run in ("two", "one")]
    for key in ("D_loss", "G_loss"):
        np.testing.assert_allclose(histories[0][key], histories[1][key], rtol=1e-5)
    (task, two), (_, one) = (restore_run(str(directory / run), devices=jax.devices()[:1])
                             for run in ("two", "one"))
    images = jnp.asarray(synthetic_images(16)[0][..., None], jnp.float32) / 127.5 - 1
    assert_gan_models_close(two.model, one.model, lr=task.config.lr_d, images=images,
                            width=WIDTH)


def test_a_seed_ensemble_on_two_processes_is_its_solo_runs(distributed_runs):
    """Run 0 of an ensemble of seeds 0 and 1 trained on two processes takes the step the solo
    run of seed 0 takes on one process of two devices; run 1 another."""
    directory, _, ensemble = distributed_runs
    outs = [_output(p) for p in ensemble]
    assert "Training 2 runs of seeds 0..1 in one program" in outs[0] and "Epoch:" not in outs[1]
    histories = [json.load(open(directory / run / "GAN_history.json"))
                 for run in ("ensemble", "one")]
    for key in ("D_loss", "G_loss"):
        np.testing.assert_allclose(histories[0][key][0], histories[1][key], rtol=1e-5)
        assert not np.allclose(histories[0][key][1], histories[1][key], rtol=1e-3)
    device = jax.devices()[:1]
    task, run0 = restore_run(str(directory / "ensemble"), devices=device, run=0)
    _, solo = restore_run(str(directory / "one"), devices=device)
    images = jnp.asarray(synthetic_images(16)[0][..., None], jnp.float32) / 127.5 - 1
    assert_gan_models_close(run0.model, solo.model, lr=task.config.lr_d, images=images,
                            width=WIDTH)
