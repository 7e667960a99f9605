"""The VAE: ELBO pieces by hand, the reparameterisation, the IWAE bound, beta = 0, sharding,
resume."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import host_leaves, tensorboard_events

from jaxgen import losses, parallel
from jaxgen.errors import JaxgenError
from jaxgen.runs.latents import interpolations, reconstructions
from jaxgen.train import loop
from jaxgen.train.vae import PRESETS, VAEConfig, VAETask, burda_schedule
from jaxgen.train.vae_eval import build_evaluator, evaluate

TINY = VAEConfig(epochs=2, batch_size=16, latent_dim=3, hidden=(32,), log_every=2)


def _x(n=16, seed=0):
    return np.random.RandomState(seed).rand(n, 28, 28, 1).astype(np.float32)


# ----------------------------------------------------------------------------- pieces by hand
def test_kl_matches_closed_form_by_hand():
    mu = jnp.array([[1.0, 0.0], [0.5, -2.0]])
    log_var = jnp.array([[0.0, math.log(4.0)], [math.log(0.25), 0.0]])
    # 1/2 (sigma^2 + mu^2 - 1 - log sigma^2) per dimension
    first = 0.5 * (1 + 1 - 1 - 0) + 0.5 * (4 + 0 - 1 - math.log(4))
    second = 0.5 * (0.25 + 0.25 - 1 - math.log(0.25)) + 0.5 * (1 + 4 - 1 - 0)
    np.testing.assert_allclose(losses.gaussian_kl_to_standard(mu, log_var), [first, second],
                               rtol=1e-6)


def test_kl_matches_a_monte_carlo_estimate():
    mu, log_var = jnp.array([0.7, -0.3, 1.5]), jnp.array([-1.0, 0.4, 0.0])
    z = mu + jnp.exp(0.5 * log_var) * jax.random.normal(jax.random.PRNGKey(0), (200000, 3))
    mc = jnp.mean(losses.diagonal_gaussian_log_density(z, mu, log_var)
                  - losses.standard_normal_log_density(z))
    np.testing.assert_allclose(mc, losses.gaussian_kl_to_standard(mu, log_var), rtol=1e-2)


def test_gaussian_log_likelihood_includes_its_constants():
    x = jnp.full((1, 28, 28, 1), 0.5)
    mean = jnp.full((1, 28, 28, 1), 0.3)
    per_pixel = -0.5 * (0.2 / 0.1) ** 2 - math.log(0.1) - 0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(losses.gaussian_log_likelihood(x, mean, 0.1), [784 * per_pixel],
                               rtol=1e-5)  # float32: (0.5 - 0.3) / 0.1 is 2 only to ~1e-7


def test_bernoulli_log_likelihood_by_hand():
    x = jnp.zeros((1, 28, 28, 1)).at[0, 0, 0, 0].set(1.0)
    logits = jnp.zeros((1, 28, 28, 1)).at[0, 0, 0, 0].set(2.0).at[0, 0, 1, 0].set(-1.0)
    # pixel 0: log sigmoid(2); pixel 1: log (1 - sigmoid(-1)); the other 782: log 1/2
    expected = (math.log(1 / (1 + math.exp(-2))) + math.log(1 - 1 / (1 + math.exp(1)))
                + 782 * math.log(0.5))
    np.testing.assert_allclose(losses.bernoulli_log_likelihood(x, logits), [expected], rtol=1e-5)


def test_importance_weighted_bound_is_log_mean_exp():
    log_w = jnp.log(jnp.array([[1.0, 2.0, 6.0]]))
    np.testing.assert_allclose(losses.importance_weighted_bound(log_w), [math.log(3.0)],
                               rtol=1e-6)


def test_reparameterised_samples_have_the_posterior_mean_and_variance():
    task = VAETask(TINY)
    mu, log_var = jnp.array([[2.0, -1.0, 0.0]]), jnp.log(jnp.array([[0.25, 4.0, 1.0]]))
    eps = jax.random.normal(jax.random.PRNGKey(1), (1, 100000, 3))
    z = np.asarray(task.reparameterise(mu, log_var, eps))[0]
    np.testing.assert_allclose(z.mean(axis=0), [2.0, -1.0, 0.0], atol=0.02)
    np.testing.assert_allclose(z.var(axis=0), [0.25, 4.0, 1.0], rtol=0.02)


# ----------------------------------------------------------------------------- objective
def test_beta_zero_removes_the_kl_gradient():
    images = jnp.asarray(_x() * 2 - 1)
    key = jax.random.PRNGKey(2)
    zero, one = VAETask(VAEConfig(**{**TINY.to_dict(), "beta": 0.0})), VAETask(TINY)
    params = jax.jit(zero.init)(jax.random.PRNGKey(0)).params

    @jax.jit
    def gradients(params):
        return (jax.grad(lambda p: zero.loss(p, images, key)[0])(params),
                jax.grad(lambda p: one.loss(p, images, key)[0])(params),
                jax.grad(lambda p: one.loss(p, images, key)[1]["recon"])(params),
                jax.grad(lambda p: one.loss(p, images, key)[1]["kl"])(params))

    with jax.set_mesh(parallel.make_mesh(jax.devices()[:1])):
        g_zero, g_one, g_recon, g_kl = gradients(params)
    for a, b in zip(jax.tree.leaves(g_zero), jax.tree.leaves(g_recon)):
        np.testing.assert_array_equal(a, b)
    for a, b, c in zip(jax.tree.leaves(g_one), jax.tree.leaves(g_recon), jax.tree.leaves(g_kl)):
        np.testing.assert_allclose(a, b + c, rtol=1e-4, atol=1e-4)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_kl)) > 1e-3  # KL does pull


def test_mc_samples_average_the_reconstruction_term():
    task = VAETask(VAEConfig(**{**TINY.to_dict(), "mc_samples": 4}))
    params = jax.jit(task.init)(jax.random.PRNGKey(0)).params
    x = jnp.asarray((_x(4) > 0.5).astype(np.float32))
    with jax.set_mesh(parallel.make_mesh(jax.devices()[:1])):
        terms = task.objective_terms(params, x, jax.random.PRNGKey(3), 4)
        mu, log_var = task.encode(params, x)
        eps = jax.random.normal(jax.random.PRNGKey(3), (4, 4, 3))
        per_sample = task.log_likelihood(x[:, None], task.decode(
            params, task.reparameterise(mu, log_var, eps)))
    assert per_sample.shape == (4, 4) and float(per_sample.std()) > 0
    np.testing.assert_allclose(terms["log_lik"], per_sample.mean(axis=1), rtol=1e-6)


def test_iwae_bound_is_above_the_elbo_and_rises_with_k():
    task = VAETask(TINY)
    params = jax.jit(task.init)(jax.random.PRNGKey(0)).params
    x = jnp.asarray((_x(64) > 0.5).astype(np.float32))
    mesh = parallel.make_mesh(jax.devices()[:1])
    bounds = {}
    with jax.set_mesh(mesh):
        for k in (1, 10, 100):
            out = build_evaluator(task, mesh, k)(params, x, jax.random.PRNGKey(4))
            bounds[k] = float(out["iwae"].mean())
        elbo = float((out["log_lik"] - out["kl"]).mean())
    assert abs(bounds[1] - elbo) < 0.05 * abs(elbo)  # k = 1 is an ELBO estimate
    assert elbo < bounds[10] < bounds[100], (elbo, bounds)


def test_evaluation_reports_the_pieces(tiny_images):
    task = VAETask(TINY)
    params = jax.jit(task.init)(jax.random.PRNGKey(0)).params
    mesh = parallel.make_mesh(jax.devices()[:8])
    summary, per_image = evaluate(task, params, tiny_images[:21], mesh, iwae_k=8, batch_size=8)
    assert summary["num_images"] == 21 and per_image["mu"].shape == (21, 3)
    np.testing.assert_allclose(summary["neg_elbo"], summary["recon"] + summary["kl"], rtol=1e-5)
    assert summary["iwae_nll"] < summary["neg_elbo"]
    assert 0 <= summary["active_units"] <= 3 and summary["mean_sigma"] > 0
    # The device count changes nothing but rounding (inside the tolerances below); the
    # batching only the draws of z.
    one_device = parallel.make_mesh(jax.devices()[:1])
    same, _ = evaluate(task, params, tiny_images[:21], one_device, iwae_k=8, batch_size=8)
    for key in ("recon", "kl", "iwae_nll", "mean_sigma", "mu_std"):
        np.testing.assert_allclose(same[key], summary[key], rtol=1e-5)
    rebatched, _ = evaluate(task, params, tiny_images[:21], one_device, iwae_k=8, batch_size=21)
    for key in ("kl", "mean_sigma", "mu_std"):
        np.testing.assert_allclose(rebatched[key], summary[key], rtol=1e-5)


def test_bad_settings_are_refused():
    for change, flag in (({"beta": -1.0}, "--beta"), ({"sigma": 0.0}, "--sigma"),
                         ({"mc_samples": 0}, "--mc-samples"), ({"latent_dim": 0}, "--latent-dim"),
                         ({"hidden": (0,)}, "--hidden")):
        with pytest.raises(JaxgenError, match=flag):
            VAEConfig(**{**TINY.to_dict(), **change}).validate()


def test_burda_preset_and_schedule():
    config = PRESETS["burda"]
    config.validate()
    assert (config.hidden, config.latent_dim, config.epochs) == ((200, 200), 50, 3280)
    schedule = burda_schedule(1e-3, steps_per_epoch=10)
    # 3^0 epochs at 1e-3, then 3^1 at 1e-3 * 10^(-1/7), ..., the last 3^7 at 1e-3 * 10^(-1)
    for epoch, i in ((0, 0), (1, 1), (3, 1), (4, 2), (1092, 6), (1093, 7), (3279, 7)):
        np.testing.assert_allclose(schedule(epoch * 10), 1e-3 * 10 ** (-i / 7), rtol=1e-5)


# ----------------------------------------------------------------------------- training
def _train(workdir, images, config=TINY, n_devices=1):
    mesh = parallel.make_mesh(jax.devices()[:n_devices])
    task = VAETask(config, steps_per_epoch=len(images) // config.batch_size,
                   display_images=images[:8])
    return loop.train(task, images, str(workdir), mesh, log=lambda _: None)



@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_images):
    workdir = tmp_path_factory.mktemp("vae")
    state, history = _train(workdir, tiny_images)
    return workdir, state, history


def test_training_lowers_the_loss_and_draws_pictures(uninterrupted):
    workdir, _, history = uninterrupted
    assert np.mean(history.metrics["loss"][-2:]) < np.mean(history.metrics["loss"][:2])
    for name in ("VAE_epoch002.png", "VAE_reconstruction_epoch002.png", "VAE_curves.png",
                 "VAE_generate_animation.gif", "VAE_history.json"):
        assert (workdir / name).exists(), name


def test_tensorboard_shows_the_curves_samples_and_reconstructions(uninterrupted):
    workdir, _, history = uninterrupted
    events = tensorboard_events(workdir)
    steps = len(history.metrics["loss"]) // 2
    for name in ("loss", "recon", "kl"):
        assert events[name] and [v for _, v in events[name]] == pytest.approx(
            [history.metrics[name][s - 1] for s, _ in events[name]], rel=1e-6)
    for picture in ("VAE", "VAE_reconstruction"):
        assert [s for s, _ in events[picture]] == [steps, 2 * steps]


def test_resume_is_bit_identical(uninterrupted, tiny_images, tmp_path):
    _, expected, full = uninterrupted
    _train(tmp_path, tiny_images, VAEConfig(**{**TINY.to_dict(), "epochs": 1}))
    state, history = _train(tmp_path, tiny_images)
    for a, b in zip(host_leaves(state), host_leaves(expected)):
        np.testing.assert_array_equal(a, b)
    assert history.metrics == full.metrics


def test_eight_devices_match_one(uninterrupted, tiny_images, tmp_path):
    """All 8 steps of the run on 8 devices against 1. The VAE does not amplify rounding as the
    GAN does: under changes that only change rounding (1 vs 8 devices, jaxgen's XLA:CPU options
    vs XLA's defaults vs no YNNPACK) the metrics were at most 1.1e-6 apart (relative) and the
    parameters 6e-8, about a hundredth of the tolerances below."""
    _, expected, full = uninterrupted
    state, history = _train(tmp_path, tiny_images, n_devices=8)
    for k in ("loss", "recon", "kl"):
        np.testing.assert_allclose(history.metrics[k], full.metrics[k], rtol=1e-4)
    for a, b in zip(host_leaves(state.model.params), host_leaves(expected.model.params)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_reconstructions_and_interpolations(uninterrupted, tiny_images):
    _, state, _ = uninterrupted
    task = VAETask(TINY)
    recon = reconstructions(task, state.model.params, tiny_images[:5])
    assert recon.shape == (5, 28, 28, 1) and -1 <= recon.min() and recon.max() <= 1
    lines = interpolations(task, state.model.params, tiny_images[:3], tiny_images[3:6], steps=4)
    starts = reconstructions(task, state.model.params, tiny_images[:3])
    partners = reconstructions(task, state.model.params, tiny_images[3:6])
    assert lines.shape == (12, 28, 28, 1)
    np.testing.assert_allclose(lines[0], starts[0], atol=1e-5)  # each line starts at its image
    np.testing.assert_allclose(lines[7], partners[1], atol=1e-5)  # ... and ends at its partner
    assert np.abs(lines[5] - lines[4]).max() > 1e-3  # and moves in between


def test_conv_architecture_round_trips_shapes():
    task = VAETask(VAEConfig(**{**TINY.to_dict(), "architecture": "conv"}))
    model = jax.jit(task.init)(jax.random.PRNGKey(0))  # one program, not one per operation
    params = model.params
    x = jnp.asarray(_x(4))
    mu, log_var = task.encode(params, x)
    assert mu.shape == log_var.shape == (4, 3)
    assert task.decode(params, mu).shape == (4, 28, 28, 1)
    assert task.sample_images(model, jax.random.PRNGKey(1), 5).shape == (5, 28, 28, 1)


def test_a_seed_ensembles_test_evaluation_gives_each_run_and_their_spread(tiny_images,
                                                                          tmp_path):
    """vae_mnist.py's evaluation after training, of an ensemble of two: each run's figures are
    those of the run evaluated alone (restored as the solo run of its seed), and the file
    gives their mean and standard deviation."""
    import dataclasses
    import json

    from jaxgen.runs.restore import restore_run
    from jaxgen.train.vae_eval import train_and_evaluate

    config = dataclasses.replace(TINY, num_seeds=2, seed=5)
    mesh = parallel.make_mesh(jax.devices()[:1])
    logs = []
    _, _, summary = train_and_evaluate(config, tiny_images, tiny_images[:16],
                                       str(tmp_path / "vae"), mesh, iwae_k=4, log=logs.append)
    saved = json.load(open(tmp_path / "vae" / "test_eval.json"))
    assert saved["runs"] == summary["runs"] and [r["seed"] for r in saved["runs"]] == [5, 6]
    for r in range(2):
        task, state = restore_run(str(tmp_path / "vae"), devices=jax.devices()[:1], run=r)
        alone, _ = evaluate(task, state.model.params, tiny_images[:16], mesh, iwae_k=4)
        for key in ("neg_elbo", "kl", "iwae_nll", "active_units"):
            assert saved["runs"][r][key] == pytest.approx(alone[key], rel=1e-5), (r, key)
    figures = np.array([[run["neg_elbo"], run["kl"]] for run in saved["runs"]])
    assert (saved["neg_elbo"], saved["kl"]) == pytest.approx(tuple(figures.mean(axis=0)))
    assert saved["std"]["neg_elbo"] == pytest.approx(abs(figures[0, 0] - figures[1, 0])
                                                     / np.sqrt(2))
    assert any(line.startswith("test (mean of 2 runs), nats per image") for line in logs)
