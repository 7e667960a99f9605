"""The scripts as a user runs them: outputs of a real run, sampling, and every bad input."""

import json
import os
import re

import jax
import numpy as np
import pytest
from helpers import (
    REPO,
    SCRIPT_DEVICES,
    as_pixels,
    curve_pixels,
    grid_tiles,
    run_in_process,
    run_script,
    write_idx_dataset,
)
from PIL import Image

from jaxgen import cli
from jaxgen.runs.restore import restore_run
from jaxgen.train.gan import GANConfig


@pytest.fixture(scope="module")
def gan_cli_run(tmp_path_factory):
    """gan_mnist.py for two epochs on a tiny IDX dataset, as a process of its own."""
    directory = tmp_path_factory.mktemp("gan_cli")
    data_dir = write_idx_dataset(str(directory / "idx"))
    workdir = directory / "run"
    train = run_script("gan_mnist.py", "--data-dir", data_dir, "--epochs", 2, "--batch-size", 16,
                       "--log-every", 2, "--workdir", workdir)
    return data_dir, workdir, train


@pytest.fixture(scope="module")
def trained(gan_cli_run):
    data_dir, workdir, proc = gan_cli_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    return data_dir, workdir, proc.stdout


def test_run_prints_the_reference_log_lines(trained):
    _, _, stdout = trained
    assert re.search(r"^Epoch: \[ 1\] \[   2/   4\] D_loss: \d+\.\d{8}, G_loss: \d+\.\d{8}$",
                     stdout, re.M), stdout
    assert re.search(r"^Epoch: \[ 2\] \[   4/   4\] D_loss: ", stdout, re.M)
    assert re.search(r"^Avg one epoch time: \d+\.\d\d, total 2 epochs time: \d+\.\d\d$", stdout,
                     re.M)
    assert f"{SCRIPT_DEVICES} cpu device(s)" in stdout.splitlines()[0]


def test_run_writes_grids_gif_plot_history_and_checkpoints(trained):
    _, workdir, _ = trained
    # Epoch 2's grid: the fixed-noise samples of epoch 2's generator, 8 a row. Drawn again here
    # on one device: within a grey level (several devices may round the last bit differently).
    task, state = restore_run(str(workdir), devices=jax.devices()[:1])
    expected = as_pixels(task.generate(state.model.g, task.fixed_noise(state.rng)))
    tiles = grid_tiles(workdir / "GAN_epoch002.png", 64, ncols=8)
    assert np.abs(tiles.astype(int) - expected).max() <= 1
    assert len(np.unique(expected)) > 10  # images, not a blank
    assert Image.open(workdir / "GAN_generate_animation.gif").n_frames == 2
    drawn = curve_pixels(workdir / "GAN_loss.png")  # D_loss (blue) and G_loss (orange) drawn
    assert drawn["blue"] > 300 and drawn["orange"] > 300, drawn
    history = json.load(open(workdir / "GAN_history.json"))
    assert len(history["D_loss"]) == len(history["G_loss"]) == 8
    assert len(history["per_epoch_time"]) == 2 and len(history["total_time"]) == 1
    assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]


def test_sample_writes_a_grid_and_an_array(trained, tmp_path, capsys):
    _, workdir, _ = trained
    png, npy = tmp_path / "s.png", tmp_path / "s.npy"
    for out in (png, npy):
        code, stdout, err = run_in_process("sample.py", "--workdir", workdir, "--num", 10,
                                           "--out", out, capsys=capsys)
        assert code == 0, err[-3000:]
        assert f"wrote 10 images (prior) to {out}" in stdout
    images = np.load(npy)
    assert images.shape == (10, 28, 28, 1) and images.dtype == np.float32
    assert -1 <= images.min() < images.max() <= 1
    # The same draw (seed 0) as a grid: its pixels are the array's images, 4 a row.
    np.testing.assert_array_equal(grid_tiles(png, 10, ncols=4), as_pixels(images))


def test_rerunning_the_same_command_resumes(trained, capsys):
    data_dir, workdir, _ = trained
    code, out, err = run_in_process("gan_mnist.py", "--data-dir", data_dir, "--epochs", 2,
                                    "--batch-size", 16, "--log-every", 2, "--workdir", workdir,
                                    capsys=capsys)
    assert code == 0, err
    assert "already holds 2 epochs" in out


def _error(capsys, script, *args):
    code, out, err = run_in_process(script, *args, capsys=capsys)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and "error: " in lines[-1], err  # ours, or argparse's "<script>: error: ..."
    return lines[-1]


def test_missing_idx_file(tmp_path, capsys):
    data_dir = write_idx_dataset(str(tmp_path / "idx"))
    os.remove(os.path.join(data_dir, "train-images-idx3-ubyte.gz"))
    line = _error(capsys, "gan_mnist.py", "--data-dir", data_dir, "--workdir", tmp_path / "w")
    assert re.search(r"train-images-idx3-ubyte\[\.gz\] is missing", line)
    assert not (tmp_path / "w").exists()  # nothing created


def test_corrupt_idx_file(tmp_path, capsys):
    data_dir = write_idx_dataset(str(tmp_path / "idx"), compress=False)
    path = os.path.join(data_dir, "train-images-idx3-ubyte")
    with open(path, "r+b") as f:
        f.write(b"\x12\x34\x56\x78")
    line = _error(capsys, "gan_mnist.py", "--data-dir", data_dir, "--workdir", tmp_path / "w")
    assert "bad magic number" in line and path in line


def test_unknown_dataset(tmp_path, capsys):
    line = _error(capsys, "gan_mnist.py", "--dataset", "cifar10", "--workdir", tmp_path / "w")
    assert "invalid choice: 'cifar10'" in line


@pytest.mark.parametrize("accelerator", ["gpu", "tpu"])
def test_accelerator_that_is_not_there(accelerator, tmp_path, capsys):
    line = _error(capsys, "gan_mnist.py", "--accelerator", accelerator, "--workdir",
                  tmp_path / "w")
    assert f"no {accelerator} devices; present: cpu (8 devices)" in line


def test_batch_not_divisible_by_device_count(tmp_path, capsys):
    line = _error(capsys, "gan_mnist.py", "--batch-size", 12, "--workdir", tmp_path / "w")
    assert "--batch-size 12 is not divisible by the 8 devices" in line and "8 or 16" in line


@pytest.mark.parametrize("flag,value", [("--epochs", 0), ("--batch-size", -4)])
def test_non_positive_epochs_or_batch_size(flag, value, tmp_path, capsys):
    line = _error(capsys, "gan_mnist.py", flag, value, "--workdir", tmp_path / "w")
    assert f"{flag} must be a positive integer, got {value}" in line


def test_process_id_out_of_range(tmp_path, capsys):
    line = _error(capsys, "gan_mnist.py", "--coordinator-address", "127.0.0.1:1",
                  "--num-processes", 2, "--process-id", 2, "--workdir", tmp_path / "w")
    assert "--process-id must be in 0..1 for --num-processes 2, got 2" in line


def test_unwritable_workdir(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    line = _error(capsys, "gan_mnist.py", "--workdir", blocker / "run")
    assert "is not writable" in line


def test_resuming_with_a_conflicting_config_changes_nothing(trained, capsys):
    data_dir, workdir, _ = trained

    def outputs():  # every file of the run but the lock, which each run takes and writes
        return {p: os.path.getmtime(workdir / p) for p in os.listdir(workdir) if p != ".lock"}

    before = outputs()
    line = _error(capsys, "gan_mnist.py", "--data-dir", data_dir, "--epochs", 3, "--batch-size",
                  16, "--seed", 5, "--workdir", workdir)
    assert "seed=0 (this command: 5)" in line and "new --workdir" in line
    assert outputs() == before


def test_sample_without_checkpoints(tmp_path, capsys):
    line = _error(capsys, "sample.py", "--workdir", tmp_path, "--out", tmp_path / "x.png")
    assert "holds no checkpoints" in line


def test_sample_to_an_unknown_format(trained, tmp_path, capsys):
    _, workdir, _ = trained
    line = _error(capsys, "sample.py", "--workdir", workdir, "--out", tmp_path / "x.jpg")
    assert "must end in .png" in line and not (tmp_path / "x.jpg").exists()


def test_sample_says_which_epoch_it_drew_from_past_an_unreadable_one(trained, tmp_path,
                                                                     capsys):
    import shutil

    _, workdir, _ = trained
    copy = shutil.copytree(workdir, tmp_path / "run")
    for root, _, names in os.walk(copy / "checkpoints" / "2" / "state"):
        for name in names:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    code, out, err = run_in_process("sample.py", "--workdir", copy, "--num", 4, "--out",
                                    tmp_path / "x.npy", capsys=capsys)
    assert code == 0, err
    assert f"restored the checkpoint of epoch 1 from {copy}" in out.splitlines()
    assert np.load(tmp_path / "x.npy").shape == (4, 28, 28, 1)


def test_a_label_for_an_unconditional_gan_is_refused(trained, tmp_path, capsys):
    _, workdir, _ = trained
    line = _error(capsys, "sample.py", "--workdir", workdir, "--label", 3, "--out",
                  tmp_path / "x.png")
    assert line.startswith("error: --label needs a conditional GAN (CGAN, ACGAN, infoGAN)")
    assert "holds a GAN run" in line and not (tmp_path / "x.png").exists()


_CACHE_PROBE = """
import sys
import jax, jax.numpy as jnp
from jaxgen import cli
from jaxgen.train.gan import GANConfig

def main():
    args = cli.training_parser("probe", GANConfig).parse_args(sys.argv[1:])
    cli.prepare_run(args, GANConfig.from_flags(args), "probe")
    print(jax.jit(lambda x: jnp.sin(x) * 3)(jnp.arange(4.0)).sum())

cli.run(main)
"""


@pytest.mark.parametrize("flags,kept", [((), True), (("--no-compilation-cache",), False)])
def test_scripts_keep_compiled_programs_unless_told_not_to(flags, kept, tmp_path):
    """Without JAX_COMPILATION_CACHE_DIR, a script's programs go to $XDG_CACHE_HOME/jaxgen/xla,
    where a rerun finds them; --no-compilation-cache keeps none."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, "-c", _CACHE_PROBE, "--workdir", str(tmp_path / "w"),
                           *flags], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cache = tmp_path / "cache" / "jaxgen" / "xla"
    entries = list(cache.iterdir()) if cache.exists() else []
    assert bool(entries) == kept, entries


def test_scripts_print_each_line_at_once_into_a_pipe():
    """A log redirected to a file or a pipe shows each line when it is printed (cli.run makes
    standard output line-buffered), not when a buffer fills minutes later."""
    import select
    import subprocess
    import sys

    main = ("import sys\nfrom jaxgen import cli\n\ndef main():\n    print('first line')\n"
            "    sys.stdin.readline()\n\ncli.run(main)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen([sys.executable, "-c", main], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the line did not arrive while the script was still running"
        assert proc.stdout.readline() == "first line\n"
    finally:
        proc.stdin.close()
        proc.wait(60)
    assert proc.returncode == 0


def test_given_flags_are_those_on_the_command_line():
    """What a script tells apart from defaults (gan_collection.py passes only these to every
    GAN): flags given, abbreviated or with '=', even when given their default value."""
    parser = cli.training_parser("", GANConfig)
    assert cli.given_flags(parser, []) == set()
    given = cli.given_flags(parser, ["--epochs", "3", "--batchnorm-scale", "ones",
                                     "--lr-d=2e-4", "--no-compilation-cache"])
    assert given == {"epochs", "batchnorm_scale_init", "lr_d", "compilation_cache"}


@pytest.mark.parametrize("script", ["sample.py", "evaluate.py"])
@pytest.mark.parametrize("seed", [-1, 2 ** 32, 2 ** 64])
def test_a_seed_out_of_range_is_one_error_in_the_drawing_scripts(script, seed, tmp_path, capsys):
    """The same check as the training scripts' --seed: no overflow traceback, no seed that
    silently wraps around to another one."""
    args = ["--workdir", tmp_path, "--seed", seed]
    args += ["--out", tmp_path / "x.png"] if script == "sample.py" else ["--classifier", tmp_path]
    line = _error(capsys, script, *args)
    assert line == f"error: --seed must be an integer in 0..4294967295, got {seed}."


def test_a_scripts_own_defaults_are_its_flags_and_their_help():
    """A script's own default (e.g. the KL sweeps' Gaussian decoder and 10 epochs) is the value
    its flag takes when not given, and the one its --help shows."""
    from jaxgen.train.vae import VAEConfig

    parser = cli.training_parser("doc", VAEConfig, defaults={"epochs": 7,
                                                              "likelihood": "gaussian"})
    args = parser.parse_args([])
    assert (args.epochs, args.likelihood, args.batch_size) == (7, "gaussian",
                                                               VAEConfig().batch_size)
    text = " ".join(parser.format_help().split())
    assert "rerunning with more continues (default: 7)" in text
    assert "(default: gaussian)" in text and "(default: bernoulli)" not in text
    with pytest.raises(ValueError, match=r"not flags of VAEConfig here: \['epoch'\]"):
        cli.training_parser("doc", VAEConfig, defaults={"epoch": 7})  # a misspelt field
    with pytest.raises(ValueError, match=r"not flags of VAEConfig here: \['beta'\]"):
        cli.training_parser("doc", VAEConfig, exclude=("beta",), defaults={"beta": 0.5})
