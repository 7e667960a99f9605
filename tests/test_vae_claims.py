"""The KL question's pieces: the Gaussian reconstruction term with K samples by hand, the
sigma/beta equivalence of a fixed-variance decoder, the latent probes and the I(x; z) estimate on
toys whose answers are known, the sweeps of seed ensembles end to end, and the sweeps' refusal
of bad input."""

import importlib.util
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import cli, parallel
from jaxgen.metrics import probes
from jaxgen.train.vae import VAEConfig, VAETask

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = os.path.join(REPO, "experiments", "kl")  # the KL study's scripts and measurements
TINY = VAEConfig(batch_size=8, latent_dim=3, hidden=(16,), likelihood="gaussian")


def _targets(tiny_images, n=8):
    return jnp.asarray(tiny_images[:n], jnp.float32) / 255.0


def _mesh():
    return jax.set_mesh(parallel.make_mesh(jax.devices()[:1]))


# ----------------------------------------------------------------------------- the objective
def test_gaussian_reconstruction_term_with_three_samples_by_hand(tiny_images):
    sigma, k = 0.3, 3
    task = VAETask(VAEConfig(**{**TINY.to_dict(), "sigma": sigma, "mc_samples": k, "beta": 0.0}))
    x = _targets(tiny_images)
    key = jax.random.PRNGKey(1)
    with _mesh():
        params = jax.jit(task.init)(jax.random.PRNGKey(0)).params
        terms = task.objective_terms(params, x, key, k)
        loss, metrics = task.loss(params, x * 2 - 1, jax.random.PRNGKey(2))
        _, eps_key = jax.random.split(jax.random.PRNGKey(2))
        loss_terms = task.objective_terms(params, x, eps_key, k)
    mu, log_var = task.encode(params, x)
    eps = np.asarray(jax.random.normal(key, (len(x), k, 3)), np.float64)
    z = np.asarray(mu, np.float64)[:, None] + np.exp(0.5 * np.asarray(log_var, np.float64))[
        :, None] * eps
    means = np.asarray(task.decode(params, jnp.asarray(z, jnp.float32)), np.float64)
    xs = np.asarray(x, np.float64)
    d = 28 * 28
    # -(1/(2 sigma^2 K)) sum_k |x - mu_theta(z_k)|^2 + C,  C = -D log sigma - D/2 log 2 pi
    squared = np.sum(np.square(xs[:, None] - means), axis=(2, 3, 4))  # (B, K)
    by_hand = (-squared.sum(axis=1) / (2 * sigma ** 2 * k) - d * math.log(sigma)
               - d / 2 * math.log(2 * math.pi))
    np.testing.assert_allclose(terms["log_lik"], by_hand, rtol=1e-5)
    # beta = 0: the loss is the batch mean of the reconstruction term alone
    np.testing.assert_allclose(loss, -np.mean(loss_terms["log_lik"]), rtol=1e-6)
    np.testing.assert_allclose(metrics["recon"], loss, rtol=1e-6)


@pytest.mark.parametrize("beta, sigma", [(1.0, 0.1), (0.5, 0.3)])
def test_sigma_and_beta_trade_gradients_are_proportional(tiny_images, beta, sigma):
    """L(beta, sigma) = 1/(2 sigma^2) [E|x - mu|^2 + 2 sigma^2 beta KL] + const, so its gradient
    is 1/(2 sigma^2) times the gradient at (2 sigma^2 beta, 1/sqrt 2)."""
    base = TINY.to_dict()
    first = VAETask(VAEConfig(**{**base, "beta": beta, "sigma": sigma}))
    second = VAETask(VAEConfig(**{**base, "beta": 2 * sigma ** 2 * beta,
                                  "sigma": 1 / math.sqrt(2)}))
    images = jnp.asarray(tiny_images[:8], jnp.float32) / 127.5 - 1
    key = jax.random.PRNGKey(3)
    with _mesh():
        params = jax.jit(first.init)(jax.random.PRNGKey(0)).params
        g1, _ = jax.grad(first.loss, has_aux=True)(params, images, key)
        g2, _ = jax.grad(second.loss, has_aux=True)(params, images, key)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(a) * 2 * sigma ** 2, b, rtol=2e-3, atol=1e-6)


# ----------------------------------------------------------------------------- probes and MI
def test_linear_probe_and_nearest_neighbour_read_a_latent_that_is_the_label():
    rng = np.random.RandomState(0)
    train_y, test_y = rng.randint(0, 10, 500), rng.randint(0, 10, 200)
    for encode in (lambda y: np.eye(10)[y], lambda y: y[:, None].astype(np.float32)):
        probe = probes.linear_probe(encode(train_y), train_y, encode(test_y), test_y)
        assert probe["test_accuracy"] == 1.0 and probe["train_accuracy"] == 1.0
        assert probes.nearest_neighbour_accuracy(encode(train_y), train_y, encode(test_y),
                                                 test_y) == 1.0


def test_linear_probe_of_noise_is_at_chance():
    rng = np.random.RandomState(0)  # the shapes of the one-hot case: one compiled fit for both
    probe = probes.linear_probe(rng.randn(500, 10), rng.randint(0, 10, 500), rng.randn(2000, 10),
                                rng.randint(0, 10, 2000))
    assert abs(probe["test_accuracy"] - 0.1) < 0.03


def test_mutual_information_of_a_constant_encoder_is_zero():
    mi = probes.aggregate_posterior_mutual_information(np.full((300, 4), 0.7),
                                                       np.full((300, 4), -1.0), samples=2)
    assert abs(mi["mi"]) < 1e-9 and mi["log_n"] == pytest.approx(math.log(300))


def test_mutual_information_of_separated_clusters_is_the_label_entropy():
    """Posteriors that are the same within a class and far apart across classes: I = H(label)."""
    labels = np.random.RandomState(0).randint(0, 4, 400)
    frequencies = np.bincount(labels) / len(labels)
    entropy = -np.sum(frequencies * np.log(frequencies))
    mi = probes.aggregate_posterior_mutual_information(np.eye(4)[labels] * 50.0,
                                                       np.zeros((400, 4)))
    assert mi["mi"] == pytest.approx(entropy, abs=1e-6)


def test_mutual_information_saturates_at_log_n_for_a_deterministic_encoder():
    rng = np.random.RandomState(0)
    mi = probes.aggregate_posterior_mutual_information(rng.randn(200, 3), np.full((200, 3), -30.0))
    assert mi["mi"] == pytest.approx(math.log(200), abs=1e-9)


def test_rate_is_mutual_information_plus_marginal_kl_bound():
    rng = np.random.RandomState(1)
    mu, log_var = rng.randn(300, 2), rng.uniform(-2, 0, (300, 2))
    mi = probes.aggregate_posterior_mutual_information(mu, log_var, samples=4)["mi"]
    assert 0 < mi <= _script("claims").rate_of(mu, log_var)


def test_nearest_distances_and_memorisation():
    refs = np.eye(5, 8) * 3.0
    queries = refs[[1, 3]] + 0.1
    index, dist = probes.nearest_neighbours(queries, refs)
    assert list(index) == [1, 3]
    np.testing.assert_allclose(dist, [math.sqrt(8 * 0.01)] * 2, rtol=1e-9)
    # samples that are training images: all nearer a training image than any test image
    rng = np.random.RandomState(0)
    train = rng.randint(0, 256, (20, 28, 28, 1)).astype(np.uint8)
    test = rng.randint(0, 256, (10, 28, 28, 1)).astype(np.uint8)
    memo = _script("claims").memorisation(train[:5].astype(np.float32) / 127.5 - 1, train, test)
    assert memo["nearer_train"] == 1.0 and memo["d_train"] == pytest.approx(0, abs=1e-5)


def test_a_table_cell_is_the_runs_mean_and_std_and_one_runs_value_alone(monkeypatch):
    monkeypatch.syspath_prepend(STUDY)  # as `python experiments/kl/..`: its modules
    import report

    rows = [{"beta": 0.0, "seed": 3, "rate": 1.0, "mi": 0.5}, {"beta": 0.0, "seed": 4, "rate": 3.0},
            {"beta": 1.0, "seed": 3, "rate": 0.5, "mi": 0.25}]
    two, one = report.summarise(rows, ("beta",))
    assert (two["runs"], one["runs"]) == (2, 1)
    assert report.mean_std(two, "rate") == "2.00 ± 1.41"  # mean 2, sample std sqrt(2)
    assert report.mean_std(one, "rate") == "0.5"  # one run has no spread to give
    assert report.mean_std(one, "mi") == "0.25"
    assert report.mean_std(two, "mi") == "-"  # one of its runs lacks it: no cell


# ----------------------------------------------------------------------------- bad input
def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(STUDY, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script, flags, named", [
    ("sweeps", ["--sigma", "0"], "--sigma"),
    ("sweeps", ["--sigma=-0.1"], "--sigma"),
    ("sweeps", ["--mc-samples", "0"], "--mc-samples"),
    ("sweeps", ["--betas", "0,1,1"], "--betas"),
    ("sweeps", ["--betas=-1,0"], "--betas"),
    ("sweeps", ["--sigmas", "0.1,0.1"], "--sigmas"),
    ("sweeps", ["--sigmas=0.1,-1"], "--sigmas"),
    ("sweeps", ["--sigmas", "0,1"], "--sigmas"),
    ("sweeps", ["--mc-samples-sweep", "1,1"], "--mc-samples-sweep"),
    ("ablation", ["--likelihood", "gaussian", "--sigma", "0"], "--sigma"),
    ("ablation", ["--mc-samples", "0"], "--mc-samples"),
    ("ablation", ["--betas", "1,1"], "--betas"),
    ("ablation", ["--betas=0,-2"], "--betas"),
])
def test_bad_input_is_one_error_line_and_exit_2(script, flags, named, monkeypatch, capsys,
                                                tmp_path):
    monkeypatch.syspath_prepend(STUDY)  # as `python experiments/kl/..`
    module = _script(script)
    monkeypatch.setattr(sys, "argv", [script + ".py", "--workdir", str(tmp_path / "w"),
                                      "--data-dir", str(tmp_path / "none"), *flags])
    with pytest.raises(SystemExit) as exit_info:
        cli.run(module.main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------- the sweeps
def test_sweeps_of_seed_ensembles_give_a_row_per_run_and_mean_and_std(tmp_path, monkeypatch,
                                                                      capsys):
    """sweeps.py --num-seeds 2 on a tiny set: each point's two runs trained together and each
    measured with its own test figures; a CSV row per run, the tables and figures of means."""
    import csv
    import json

    from helpers import is_png, run_in_process, write_idx_dataset

    monkeypatch.syspath_prepend(STUDY)
    data_dir = write_idx_dataset(str(tmp_path / "idx"), n_train=64, n_test=32)
    workdir = tmp_path / "sweeps"
    args = ("--data-dir", data_dir, "--workdir", workdir, "--epochs", 1, "--batch-size", 16,
            "--hidden", 16, "--latent-dim", 3, "--iwae-k", 4, "--eval-images", 16,
            "--nn-samples", 8, "--num-samples", 60, "--log-every", 50, "--betas", "0,1",
            "--sigmas", "0.1", "--mc-samples-sweep", "1", "--k-sweep-betas", "1",
            "--picture-betas", "0", "--seed", 5, "--num-seeds", 2)
    code, out, err = run_in_process("kl/sweeps.py", *args, capsys=capsys)
    assert code == 0, err[-3000:]
    rows = list(csv.DictReader(open(workdir / "beta_sweep.csv")))
    assert [(float(r["beta"]), int(r["seed"])) for r in rows] == [(0, 5), (0, 6), (1, 5), (1, 6)]
    for beta in (0, 1):
        point = workdir / "runs" / f"beta{beta}_sigma0.1_K1"
        runs = json.load(open(point / "test_eval.json"))["runs"]
        for r, row in enumerate(r for r in rows if float(r["beta"]) == beta):
            # each run's measurements are its own: its rate is its own test KL
            assert float(row["rate"]) == pytest.approx(runs[r]["kl"], rel=1e-6)
            assert (point / f"run{r}" / "claims.json").is_file()
        assert runs[0]["kl"] != runs[1]["kl"]
    # the point the sigma and K sweeps share with the beta sweep is trained and measured once
    for name in ("sigma_sweep", "mc_samples_sweep"):
        again = list(csv.DictReader(open(workdir / f"{name}.csv")))
        assert again == [r for r in rows if float(r["beta"]) == 1], name
    table = open(workdir / "beta_sweep.md").read()
    assert "| beta | sigma | K | epochs | runs |" in table and " ± " in table
    assert "2 runs a point, seeds 5..6" in table
    for name in ("beta_sweep", "rate_distortion", "encoder_sigma", "prior_samples",
                 "reconstructions", "nearest_images", "latent_scatter", "latent_grid"):
        assert is_png(workdir / f"{name}.png"), name
    # (that rerunning reads each run's measurements back: test_vae_data_size.py)
