"""The VAE scripts as a user runs them: training with evaluation, sampling, the KL ablation."""

import csv
import json
import re

import jax
import numpy as np
import pytest
from helpers import (
    REPO,
    as_pixels,
    curve_pixels,
    grid_tiles,
    is_png,
    run_in_process,
    run_script,
    script,
    synthetic_images,
    write_idx_dataset,
)

from jaxgen.keys import named_key
from jaxgen.runs.restore import restore_run
from jaxgen.train import vae

TINY_FLAGS = ("--batch-size", 16, "--hidden", 16, "--iwae-k", 4, "--log-every", 2)


@pytest.fixture(scope="module")
def vae_cli_run(tmp_path_factory):
    """vae_mnist.py for two epochs on a tiny IDX dataset, as a process of its own."""
    directory = tmp_path_factory.mktemp("vae_cli")
    data_dir = write_idx_dataset(str(directory / "idx"))
    command = ("vae_mnist.py", "--data-dir", data_dir, "--epochs", 2, "--latent-dim", 2,
               "--workdir", directory / "run", *TINY_FLAGS)
    return data_dir, directory / "run", command, run_script(*command)


@pytest.fixture(scope="module")
def trained(vae_cli_run):
    data_dir, workdir, _, proc = vae_cli_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    return data_dir, workdir, proc.stdout


def test_run_logs_trains_and_evaluates(trained):
    _, workdir, stdout = trained
    assert re.search(r"^Epoch: \[ 2\] \[   4/   4\] loss: \d+\.\d+, recon: \d+\.\d+, kl: "
                     r"\d+\.\d+, sigma: \d+\.\d+$", stdout, re.M), stdout
    assert re.search(r"^test, nats per image: -ELBO ", stdout, re.M), stdout
    result = json.load(open(workdir / "test_eval.json"))
    for key in ("neg_elbo", "recon", "kl", "iwae_nll", "mean_sigma", "active_units"):
        assert np.isfinite(result[key]), key
    assert (result["epoch"], result["iwae_k"], result["num_images"]) == (2, 4, 32)
    assert curve_pixels(workdir / "VAE_curves.png")["blue"] > 4 * 300  # 4 panels of curves


def test_run_draws_its_samples_and_reconstructions(trained):
    """Epoch 2's pictures, drawn again here from epoch 2's checkpoint on one device: the same
    images within a grey level (several devices may round the last bit differently)."""
    _, workdir, _ = trained
    task, state = restore_run(str(workdir), devices=jax.devices()[:1])
    params = state.model.params
    samples = task.sample_images(state.model, named_key(state.rng, "sample"), 64)
    tiles = grid_tiles(workdir / "VAE_epoch002.png", 64, ncols=8).astype(int)
    assert np.abs(tiles - as_pixels(samples)).max() <= 1
    # The 32 test images as the model sees them (binarised), each row of 8 followed by their
    # reconstructions.
    targets = vae.fixed_targets(task, synthetic_images(32, seed=1)[0][..., None])  # in [0, 1]
    shown, recons = targets * 2 - 1, task.reconstruct(params, targets)
    tiles = grid_tiles(workdir / "VAE_reconstruction_epoch002.png", 64, ncols=8).astype(int)
    for row in range(4):
        top = tiles[16 * row:16 * row + 8]
        np.testing.assert_array_equal(top, as_pixels(shown[8 * row:8 * row + 8]))
        below = tiles[16 * row + 8:16 * row + 16]
        assert np.abs(below - as_pixels(recons[8 * row:8 * row + 8])).max() <= 1, row


def test_rerun_reads_the_evaluation_back(trained, vae_cli_run, capsys):
    code, out, err = run_in_process(*vae_cli_run[2], capsys=capsys)  # the same command again
    assert code == 0, err
    assert "nothing to train" in out and "read from" in out


def test_sample_draws_prior_reconstructions_and_interpolations(trained, tmp_path, capsys):
    data_dir, workdir, _ = trained
    for kind, num, count in (("prior", 6, 6), ("reconstructions", 8, 16),
                             ("interpolations", 3, 30)):
        out = tmp_path / f"{kind}.npy"
        code, _, err = run_in_process("sample.py", "--workdir", workdir, "--kind", kind,
                                      "--num", num, "--data-dir", data_dir, "--out", out,
                                      capsys=capsys)
        assert code == 0, err
        images = np.load(out)
        assert images.shape == (count, 28, 28, 1) and -1 <= images.min() <= images.max() <= 1


@pytest.fixture(scope="module")
def ablation_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vae_ablation")
    data_dir = write_idx_dataset(str(directory / "idx"))
    workdir = directory / "ablation"
    return workdir, run_script(
        "kl/ablation.py", "--data-dir", data_dir, "--epochs", 1, "--latent-dim", 3,
        "--eval-images", 16, "--num-samples", 60, "--workdir", workdir, *TINY_FLAGS)


def test_ablation_writes_the_table_and_figures(ablation_run):
    workdir, proc = ablation_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(workdir / "ablation.csv")))
    assert [float(r["beta"]) for r in rows] == [1.0, 0.0]
    for row in rows:
        for column in ("recon", "kl", "neg_elbo", "mean_sigma", "active_units", "iwae_nll",
                       "prior_fd_pixels"):
            assert np.isfinite(float(row[column])), column
    assert "| beta |" in open(workdir / "ablation.md").read()
    for name in ("latent_scatter.png", "latent_grid.png", "prior_samples.png",
                 "reconstructions.png"):
        assert is_png(workdir / name), name
    for run in ("beta_1", "beta_0", "beta_1_latent2", "beta_0_latent2"):
        assert (workdir / run / "checkpoints" / "1").is_dir(), run


def test_ablation_of_seed_ensembles_gives_a_row_per_run_and_mean_and_std(tmp_path, capsys,
                                                                          monkeypatch):
    """--num-seeds 2: each beta's two runs (seeds 5 and 6) trained as one ensemble, measured
    as solo runs (their claims each in its own folder); ablation.csv and claims.csv have a row
    per run, the markdown tables each figure's mean ± std over the runs of a beta."""
    import os

    monkeypatch.syspath_prepend(os.path.join(REPO, "experiments", "kl"))  # its own modules
    import report

    data_dir = write_idx_dataset(str(tmp_path / "idx"))
    workdir = tmp_path / "ablation"
    code, out, err = run_in_process(
        "kl/ablation.py", "--data-dir", data_dir, "--epochs", 1, "--latent-dim", 3,
        "--eval-images", 16, "--num-samples", 60, "--picture-latent-dim", 0, "--claims",
        "--nn-samples", 8, "--seed", 5, "--num-seeds", 2, "--workdir", workdir, *TINY_FLAGS,
        capsys=capsys)
    assert code == 0, err[-3000:]
    rows = list(csv.DictReader(open(workdir / "ablation.csv")))
    assert [(float(r["beta"]), int(r["seed"])) for r in rows] == [(1, 5), (1, 6), (0, 5), (0, 6)]
    assert rows[0]["recon"] != rows[1]["recon"]  # two runs, not one twice
    recon = np.array([float(r["recon"]) for r in rows[:2]])
    cell = f"{report.fmt(recon.mean(), digits=4)} ± {report.fmt(recon.std(ddof=1), digits=2)}"
    table = open(workdir / "ablation.md").read()
    assert re.search(r"^\| 1 \| 2 \| " + re.escape(cell) + r" \|", table, re.M), table
    assert "2 runs of seeds 5..6" in table
    claims = list(csv.DictReader(open(workdir / "claims.csv")))
    assert [int(r["seed"]) for r in claims] == [5, 6, 5, 6]
    for run in ("run0", "run1"):
        assert (workdir / "beta_1" / run / "claims.json").is_file(), run
    assert " ± " in open(workdir / "claims.md").read()


@pytest.mark.parametrize("flags, message", [
    (("--beta", -1), "--beta must be a finite number >= 0"),
    (("--sigma", 0), "--sigma must be positive"),
    (("--mc-samples", 0), "--mc-samples must be a positive integer"),
    (("--latent-dim", 0), "--latent-dim must be a positive integer"),
    (("--iwae-k", 0), "--iwae-k must be a positive integer"),
])
def test_bad_input_is_one_clear_error_and_creates_nothing(flags, message, tmp_path, capsys):
    workdir = tmp_path / "run"
    code, _, err = run_in_process("vae_mnist.py", "--data-dir", tmp_path / "missing",
                                  "--workdir", workdir, *flags, capsys=capsys)
    assert code == 2 and err.startswith(f"error: {message}"), err
    assert not workdir.exists()


def test_ablation_refuses_a_negative_beta(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(script("kl"))  # as `python experiments/kl/..`
    code, _, err = run_in_process("kl/ablation.py", "--betas", "1,-0.5", "--workdir",
                                  tmp_path / "a", capsys=capsys)
    assert code == 2 and "--betas must be distinct finite numbers >= 0" in err
    assert not (tmp_path / "a").exists()
