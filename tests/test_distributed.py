"""Two processes joined by jax.distributed on 127.0.0.1 compute what one process computes."""

import json
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from cli_helpers import REPO, script
from conftest import synthetic_images, write_idx_dataset
from gan_checks import assert_gan_models_close
from jaxgen.train.restore import restore_run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gan(data_dir, workdir, devices_per_process, *extra):
    import os

    env = {**os.environ,
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"}
    cmd = [sys.executable, script("gan_mnist.py"), "--data-dir", data_dir, "--epochs", "1",
           "--batch-size", "16", "--log-every", "1", "--workdir", str(workdir), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)


def _wait(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


def test_two_processes_match_one_process(tmp_path):
    # 16 training images at batch 16: one step, compared as in test_eight_devices_match_one.
    data_dir = write_idx_dataset(str(tmp_path / "idx"), n_train=16, n_test=16)
    port = _free_port()
    procs = [_gan(data_dir, tmp_path / "two", 1, "--coordinator-address", f"127.0.0.1:{port}",
                  "--num-processes", "2", "--process-id", str(i)) for i in range(2)]
    outs = [_wait(p) for p in procs]
    _wait(_gan(data_dir, tmp_path / "one", 2))
    assert "2 cpu device(s) on 2 process(es)" in outs[0]
    assert "Epoch: [ 1] [   1/   1]" in outs[0] and "Epoch:" not in outs[1]  # process 0 logs

    histories = [json.load(open(tmp_path / run / "GAN_history.json")) for run in ("two", "one")]
    for key in ("D_loss", "G_loss"):
        np.testing.assert_allclose(histories[0][key], histories[1][key], rtol=1e-5)
    (task, two), (_, one) = (restore_run(str(tmp_path / run), devices=jax.devices()[:1])
                             for run in ("two", "one"))
    images = jnp.asarray(synthetic_images(16)[0][..., None], jnp.float32) / 127.5 - 1
    assert_gan_models_close(two.model, one.model, steps=1, lr=task.config.lr_d, images=images)
