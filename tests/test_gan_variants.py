"""The GAN collection on the adversarial core: each loss by hand, the penalty against a critic
whose input gradient is known, clipping, n_critic, BEGAN's k and learning rates, sharding,
resume, a toy objective registered here, and every variant trained and sampled end to end."""

import argparse
import dataclasses
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from helpers import WIDTH, host_leaves

from jaxgen import losses, parallel
from jaxgen.errors import JaxgenError
from jaxgen.runs.restore import restore_run, sample_images
from jaxgen.train import began, gan, gan_variants, loop
from jaxgen.train.gan import GANConfig, GANTask
from jaxgen.train.gan_objective import Objective, Penalty

TINY = dict(epochs=1, batch_size=16, log_every=1, width=WIDTH)


def _images(tiny_images, n=16):
    return jnp.asarray(tiny_images[:n], jnp.float32) / 127.5 - 1.0


def _task(name, **settings):
    cls = gan_variants.task_class(name)
    return cls(cls.config_class(**{**TINY, **settings}))


def _train(task, images, workdir, n_devices=1, log=None):
    mesh = parallel.make_mesh(jax.devices()[:n_devices])
    return loop.train(task, images, str(workdir), mesh, log=log or (lambda _: None))


# ----------------------------------------------------------------------------- losses by hand

def test_least_squares_losses_by_hand():
    real, fake = jnp.array([1.0, 0.5]), jnp.array([0.0, 2.0])
    # D: mean((1-1)^2, (0.5-1)^2) + mean(0^2, 2^2) = 0.125 + 2; G: mean((0-1)^2, (2-1)^2) = 1
    assert float(losses.least_squares_discriminator_loss(real, fake)) == pytest.approx(2.125)
    assert float(losses.least_squares_generator_loss(fake)) == pytest.approx(1.0)


def test_wasserstein_losses_by_hand():
    real, fake = jnp.array([3.0, 1.0]), jnp.array([-1.0, 0.0])
    assert float(losses.wasserstein_critic_loss(real, fake)) == pytest.approx(-2.0 - 0.5)
    assert float(losses.wasserstein_generator_loss(fake)) == pytest.approx(0.5)


def test_hinge_losses_by_hand():
    real, fake = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.0])
    # D: mean(max(0, 1 - 2), max(0, 1 - 0.5)) + mean(max(0, 1 - 2), max(0, 1 + 0)) = 0.25 + 0.5
    assert float(losses.hinge_discriminator_loss(real, fake)) == pytest.approx(0.75)
    assert float(losses.hinge_generator_loss(fake)) == pytest.approx(1.0)


def test_relativistic_average_losses_by_hand():
    real, fake = jnp.array([2.0, 0.0]), jnp.array([-1.0, 1.0])  # means 1 and 0

    def softplus(x):
        return math.log1p(math.exp(x))

    # BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x); real - mean(fake) = (2, 0),
    # fake - mean(real) = (-2, 0)
    d = (softplus(-2) + softplus(0)) / 2 + (softplus(-2) + softplus(0)) / 2
    assert float(losses.relativistic_average_loss(real, fake)) == pytest.approx(d, rel=1e-6)
    # G's: the roles swapped, fake - mean(real) against 1 and real - mean(fake) against 0
    g = (softplus(2) + softplus(0)) / 2 + (softplus(2) + softplus(0)) / 2
    assert float(losses.relativistic_average_loss(fake, real)) == pytest.approx(g, rel=1e-6)


def test_energy_losses_by_hand():
    assert float(losses.mse(jnp.ones((2, 2)), jnp.zeros((2, 2)))) == pytest.approx(1.0)
    # D(x) + max(0, margin - D(G(z))): the hinge is active below the margin, off above it
    assert float(losses.energy_discriminator_loss(0.3, 0.4, 1.0)) == pytest.approx(0.9)
    assert float(losses.energy_discriminator_loss(0.3, 1.5, 1.0)) == pytest.approx(0.3)
    assert float(losses.l1_reconstruction(jnp.array([1.0, -1.0]), jnp.zeros(2))) == 1.0


def test_pulling_away_term_is_the_mean_squared_cosine_of_distinct_pairs():
    codes = jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    # cosines: (1,2) 0, (1,3) 1/sqrt2, (2,3) 1/sqrt2; squared, both orders, over 3 * 2 pairs
    assert float(losses.pulling_away_term(codes)) == pytest.approx((4 * 0.5) / 6, rel=1e-6)
    # A cosine: the scale of each code does not matter (the reference's whole-batch L1 norm
    # made it depend on every code's scale).
    scaled = codes * jnp.array([[10.0], [0.1], [7.0]])
    assert float(losses.pulling_away_term(scaled)) == pytest.approx((4 * 0.5) / 6, rel=1e-6)


def test_gradient_penalty_of_a_linear_critic_is_closed_form():
    """For f(x) = w . x the input gradient is w at every point: the penalty is (||w|| - 1)^2."""
    w = jax.random.normal(jax.random.PRNGKey(0), (28, 28, 1))
    points = jax.random.uniform(jax.random.PRNGKey(1), (5, 28, 28, 1))
    grads = jax.grad(lambda x: jnp.sum(jnp.tensordot(x, w, axes=3)))(points)
    expected = (float(jnp.linalg.norm(w)) - 1.0) ** 2
    assert float(losses.gradient_penalty(grads)) == pytest.approx(expected, rel=1e-5)


def test_penalty_points():
    real = jnp.full((4, 28, 28, 1), 0.5)
    fake = jnp.full((4, 28, 28, 1), -0.5)
    config = gan_variants.DRAGANConfig()
    with jax.set_mesh(parallel.make_mesh(jax.devices()[:1])):
        x_hat = gan_variants._interpolates(real, fake, jax.random.PRNGKey(0), config)
        perturbed = gan_variants._perturbed_real(
            real + jnp.linspace(-0.1, 0.1, 28)[None, :, None, None], fake,
            jax.random.PRNGKey(0), config)
    # a x + (1 - a) G(z), one a per image in [0, 1): constant within each image
    per_image = np.asarray(x_hat).reshape(4, -1)
    assert np.all(per_image.min(1) == per_image.max(1))
    assert np.all((per_image[:, 0] > -0.5) & (per_image[:, 0] <= 0.5))
    # x + a (x_p - x) with x_p - x = 0.5 std(x) U[0, 1): above x by at most 0.5 std(x)
    x = np.asarray(real + jnp.linspace(-0.1, 0.1, 28)[None, :, None, None])
    bound = 0.5 * np.std(x, ddof=1)
    assert np.all(np.asarray(perturbed) >= x - 1e-7)
    assert np.all(np.asarray(perturbed) <= x + bound + 1e-7)


# ----------------------------------------------------------------------------- the step

def _step_fn(task):
    return jax.jit(task.train_step)


def _one_step(step_fn, model, images, step_in_epoch, n_devices=1):
    with jax.set_mesh(parallel.make_mesh(jax.devices()[:n_devices])):
        return step_fn(model, images, jax.random.PRNGKey(1), jnp.int32(step_in_epoch))


def _unchanged(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _all_changed(a, b) -> bool:
    return all(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_a_critic_keeps_the_last_g_loss_whatever_n_critic():
    """A critic's state (the last G step's loss) is there with n_critic 1 too, as in runs saved
    before the step was assembled from parts, so theirs restore; a GAN without one has none."""
    for name, n in (("WGAN", 1), ("WGAN", 5), ("WGAN_GP", 1)):
        model = jax.eval_shape(_task(name, n_critic=n).init, jax.random.PRNGKey(0))
        assert set(model.extra) == {"g_loss"}, (name, n)
    vanilla = jax.eval_shape(_task("GAN").init, jax.random.PRNGKey(0))
    assert vanilla.extra == {}  # and its layout is G and D alone, as its checkpoints have it
    assert {jax.tree_util.keystr(path[:1]) for path, _ in
            jax.tree_util.tree_flatten_with_path(vanilla)[0]} == {".g", ".d"}


def test_wgan_critic_step_clips_every_weight_and_g_waits(tiny_images):
    task = _task("WGAN", lr_d=0.05)  # a large step, so that the clip has work to do
    model = jax.jit(task.init)(jax.random.PRNGKey(0))
    new, metrics = _one_step(_step_fn(task), model, _images(tiny_images), step_in_epoch=0)
    leaves = jax.tree.leaves(new.d.params)
    assert all(float(jnp.max(jnp.abs(p))) <= task.config.clip for p in leaves)
    assert any(float(jnp.max(jnp.abs(p))) == pytest.approx(task.config.clip) for p in leaves)
    # step 1 of 5: G's parameters and optimiser state wait; its running averages moved (the
    # D step ran G forward once), and the G loss reported is the carried one
    assert _unchanged((model.g.params, model.g.opt_state), (new.g.params, new.g.opt_state))
    assert _all_changed(model.g.batch_stats, new.g.batch_stats)
    assert float(metrics["G_loss"]) == 0.0


def test_ragan_g_loss_compares_with_the_real_batch_through_the_updated_d(tiny_images):
    task = _task("RaGAN")
    model = jax.jit(task.init)(jax.random.PRNGKey(0))
    images, key = _images(tiny_images), jax.random.PRNGKey(1)
    new, metrics = _one_step(_step_fn(task), model, images, step_in_epoch=0)

    def d_out(d_params, batch):  # training mode: the batch's own BatchNorm statistics
        variables = {"params": d_params, "batch_stats": model.d.batch_stats}
        return task.discriminator.apply(variables, batch, train=True,
                                        mutable=["batch_stats"])[0]

    with jax.set_mesh(parallel.make_mesh(jax.devices()[:1])):
        z, _, _ = task.step_inputs(images, key)
        fake = task.generator.apply(model.g.variables(), z, train=True,
                                    mutable=["batch_stats"])[0]
    # D's parameters after the step are the D step's (G's step leaves them alone)
    expected = losses.relativistic_average_loss(d_out(new.d.params, fake),
                                                d_out(new.d.params, images))
    before = losses.relativistic_average_loss(d_out(model.d.params, fake),
                                              d_out(model.d.params, images))
    assert float(metrics["G_loss"]) == pytest.approx(float(expected), rel=1e-4)
    assert abs(float(before) - float(expected)) > 1e-3  # the old D would give another loss


def test_g_ema_averages_g_and_samples_from_the_average(tiny_images, monkeypatch):
    """After t steps the average is sum_s d^(t-s) g_s / sum_s d^(t-s) over G's weights after
    each step s (none of the weight on G's initialisation), and samples come from it."""
    monkeypatch.setattr(gan, "STANDING_SAMPLES", 256)  # what holds for 256 holds for 4096
    decay = 0.5
    task = _task("GAN", g_ema=decay)
    model = jax.jit(task.init)(jax.random.PRNGKey(0))
    step_fn, images = _step_fn(task), _images(tiny_images)
    trajectory = []
    for _ in range(3):
        model, _ = _one_step(step_fn, model, images, step_in_epoch=0)
        trajectory.append(model.g.params)
    weights = np.array([decay ** (len(trajectory) - 1 - s) for s in range(len(trajectory))])
    expected = jax.tree.map(lambda *ps: sum(w * np.asarray(p) for w, p in zip(weights, ps))
                            / weights.sum(), *trajectory)
    for a, b in zip(jax.tree.leaves(model.extra["g_ema"]), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(model.extra["g_ema_updates"]) == 3
    assert not _unchanged(model.extra["g_ema"], model.g.params)
    # The average samples with BatchNorm statistics of its own: in inference mode it computes
    # on the standing inputs what it computes in training mode (their batch statistics).
    average = model.g.replace(params=model.extra["g_ema"])
    standing = jax.jit(task.standing_statistics)(average)
    inputs = task.sample_inputs(jax.random.PRNGKey(0), gan.STANDING_SAMPLES)
    trained, _ = task.generator.apply(average.variables(), inputs, train=True,
                                      mutable=["batch_stats"])
    np.testing.assert_allclose(task.generate(standing, inputs), trained, atol=2e-5)
    assert not np.allclose(task.generate(average, inputs), trained, atol=1e-2)
    key = jax.random.PRNGKey(3)
    z = task.sample_prior(key, 4)
    np.testing.assert_array_equal(task.sample_images(model, key, 4),
                                  task.generate(standing, z))
    assert not np.allclose(task.sample_images(model, key, 4), task.generate(model.g, z))


def test_sampling_splits_its_draws_over_the_devices(monkeypatch):
    """Drawing samples (and the moving average's BatchNorm statistics) on eight devices: each
    device computes an eighth of the draws, and the images are those one device draws."""
    from jaxgen.runs.restore import draw_samples

    monkeypatch.setattr(gan, "STANDING_SAMPLES", 256)
    task = _task("GAN", g_ema=0.999)
    model = jax.jit(task.init)(jax.random.PRNGKey(0))
    key, drawn, flops = jax.random.PRNGKey(5), {}, {}
    for n in (1, 8):
        mesh = parallel.make_mesh(jax.devices()[:n])
        on_mesh = parallel.put_replicated(model, mesh)
        drawn[n] = draw_samples(task, on_mesh, 64, key)
        with jax.set_mesh(mesh):
            compiled = jax.jit(task.sample_images, static_argnums=2).lower(
                on_mesh, key, 64).compile()
        cost = compiled.cost_analysis()
        flops[n] = (cost[0] if isinstance(cost, list) else cost)["flops"]  # per device
    np.testing.assert_allclose(drawn[8], drawn[1], atol=1e-5)
    assert flops[8] < flops[1] / 6, flops


@pytest.fixture(scope="module")
def wgan_gp_steps(tiny_images):
    """WGAN-GP from one model: a step that waits for G and one that updates it, on one device,
    and the second on eight."""
    task = _task("WGAN_GP", width=1.0)  # the reference's, for which _assert_same_update's
    # bounds were set
    model = jax.jit(task.init)(jax.random.PRNGKey(0))
    step_fn, images, last = _step_fn(task), _images(tiny_images), task.config.n_critic - 1
    return dict(task=task, model=model, waits=_one_step(step_fn, model, images, 0),
                one=_one_step(step_fn, model, images, last),
                eight=_one_step(step_fn, model, images, last, n_devices=8))


def test_g_steps_only_on_the_n_critic_th_step(wgan_gp_steps):
    model, (waits, _), (stepped, metrics) = (wgan_gp_steps[k] for k in ("model", "waits", "one"))
    assert _unchanged((model.g.params, model.g.opt_state), (waits.g.params, waits.g.opt_state))
    assert not _unchanged(model.d.params, waits.d.params)
    assert _all_changed(model.g.params, stepped.g.params)
    assert float(metrics["G_loss"]) != 0.0
    assert float(stepped.extra["g_loss"]) == float(metrics["G_loss"])


def _assert_same_update(one, eight, lr):
    """The same losses, and the same update up to rounding: Adam's first step moves every
    parameter by about lr, so a missing or wrong gradient would show.

    D's loss is computed before any update; G's is read through D after D's step, where an
    element whose gradient is rounding-small moves by +lr on one side and -lr on the other.
    EBGAN's G loss moves most from that alone, hence its looser bound. Such elements are few in
    a kernel; a wrong gradient would move about half of them apart (docs/testing.md has the
    figures). (Biases before a BatchNorm have no gradient: their steps are all rounding.)"""
    (a, m1), (b, m8) = one, eight
    for k in m1:
        rel = 2e-3 if k == "G_loss" else 1e-4
        assert float(m8[k]) == pytest.approx(float(m1[k]), rel=rel, abs=1e-5), k
    a, b = parallel.to_host(a), parallel.to_host(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        bound = 2 * lr + 1e-4 * np.max(np.abs(x))
        assert np.max(np.abs(np.asarray(x, np.float64) - y)) <= bound, jax.tree_util.keystr(path)
    for net in ("g", "d"):
        leaves = jax.tree_util.tree_leaves_with_path(getattr(a, net).params)
        for (path, x), y in zip(leaves, jax.tree.leaves(getattr(b, net).params)):
            if jax.tree_util.keystr(path).endswith("['kernel']"):
                apart = np.mean(np.abs(np.asarray(x, np.float64) - y) > lr / 2)
                assert apart < 0.01, (net, jax.tree_util.keystr(path), apart)


def test_eight_devices_match_one_with_a_gradient_penalty(wgan_gp_steps):
    _assert_same_update(wgan_gp_steps["one"], wgan_gp_steps["eight"],
                        wgan_gp_steps["task"].config.lr_d)


def test_eight_devices_match_one_with_an_autoencoder_d(tiny_images):
    # At the reference's width: G's loss, read through D after D's step, moves with the few
    # elements of D whose step rounding flips, and a narrow D has fewer to average them out.
    task = _task("EBGAN", width=1.0)
    model, step_fn = jax.jit(task.init)(jax.random.PRNGKey(0)), _step_fn(task)
    images = _images(tiny_images)
    _assert_same_update(_one_step(step_fn, model, images, 0),
                        _one_step(step_fn, model, images, 0, n_devices=8), task.config.lr_d)


# ----------------------------------------------------------------------------- BatchNorm scales

def test_uniform_batchnorm_scales_redraw_those_scales_and_nothing_else():
    """PyTorch 0.4's BatchNorm init (scales U[0, 1)) against 1.0's (ones): every BatchNorm
    scale of G and D is a draw of U[0, 1), each layer its own, and every other parameter is
    what the ones init gives."""
    key = jax.random.PRNGKey(3)
    ones = _task("EBGAN", batchnorm_scale_init="ones", width=1.0).init(key)
    uniform = _task("EBGAN", batchnorm_scale_init="uniform", width=1.0).init(key)
    firsts = []
    for net, layers in (("g", 3), ("d", 1)):
        a = traverse_util.flatten_dict(getattr(ones, net).params)
        b = traverse_util.flatten_dict(getattr(uniform, net).params)
        assert a.keys() == b.keys()
        scales = [path for path in a if path[-1] == "scale"]
        assert len(scales) == layers
        for path in a:
            if path not in scales:
                np.testing.assert_array_equal(a[path], b[path], err_msg=str(path))
                continue
            assert np.all(np.asarray(a[path]) == 1.0)
            drawn = np.asarray(b[path])
            assert drawn.min() >= 0.0 and drawn.max() < 1.0
            # U[0, 1): mean 1/2 within 4 standard errors, standard deviation 1/sqrt(12)
            assert abs(drawn.mean() - 0.5) < 4 * 0.2887 / np.sqrt(drawn.size), path
            assert 0.2 < drawn.std() < 0.36, path
            firsts.append(drawn[:64])
    assert len({tuple(f) for f in firsts}) == len(firsts)  # no two layers share a draw


def test_ebgan_changes_the_batchnorm_default_and_keeps_its_declaration():
    """EBGAN's scales start U[0, 1) unless told otherwise; the flag keeps GANConfig's help and
    choices, and a value outside them is one sentence naming the flag."""
    defaults = {}
    for config_class in (GANConfig, gan_variants.EBGANConfig):
        parser = argparse.ArgumentParser()
        config_class.add_flags(parser)
        action = next(a for a in parser._actions if a.dest == "batchnorm_scale_init")
        assert action.choices == ("ones", "uniform") and "PyTorch 0.4" in action.help
        defaults[config_class] = parser.parse_args([]).batchnorm_scale_init
        with pytest.raises(JaxgenError, match=r"^--batchnorm-scale-init must be one of ones, "
                           r"uniform, got zeros\.$"):
            config_class(batchnorm_scale_init="zeros").validate()
    assert defaults == {GANConfig: "ones", gan_variants.EBGANConfig: "uniform"}


def test_a_run_saved_before_the_batchnorm_setting_reads_as_ones():
    """Runs saved before ``batchnorm_scale_init`` existed were initialised with ones: that is
    what their config reads as, and resuming them with ones (not EBGAN's default) conflicts
    with nothing."""
    for config_class in (GANConfig, gan_variants.EBGANConfig):
        saved = config_class(epochs=3).to_dict()
        del saved["batchnorm_scale_init"]
        assert config_class.from_dict(saved).batchnorm_scale_init == "ones"
        assert config_class(epochs=3, batchnorm_scale_init="ones").conflicts(saved) == []
        assert config_class(epochs=3, batchnorm_scale_init="uniform").conflicts(saved) == [
            "batchnorm_scale_init='ones' (this command: 'uniform')"]


def test_began_k_follows_the_balance_and_stays_in_0_1():
    config = began.BEGANConfig()
    k, m = began.began_update(jnp.float32(0.5), 0.3, 0.1, config)
    assert float(k) == pytest.approx(0.5 + 0.001 * (0.3 - 0.1))
    assert float(m) == pytest.approx(0.3 + abs(0.3 - 0.1))
    assert float(began.began_update(jnp.float32(0.0), 0.1, 5.0, config)[0]) == 0.0
    assert float(began.began_update(jnp.float32(1.0), 5.0, 0.1, config)[0]) == 1.0


def test_began_halves_the_learning_rates_when_the_epochs_mean_m_rose():
    task = _task("BEGAN", lr_floor=6e-5)
    model = jax.jit(task.init)(jax.random.PRNGKey(0))  # the reference M starts at 1
    rose, lines = task.update_after_epoch(model, {"M": np.array([0.5, 2.0])})  # mean 1.25 > 1
    assert [float(began.learning_rate(n.opt_state)) for n in (rose.g, rose.d)] == \
        pytest.approx([1e-4, 1e-4]) and "lr: 0.0002 --> 0.0001" in lines[0]
    assert float(rose.extra["m_previous"]) == 1.0  # as the reference: kept when M rose
    floored, _ = task.update_after_epoch(rose, {"M": np.array([3.0])})
    assert float(began.learning_rate(floored.g.opt_state)) == pytest.approx(6e-5)
    fell, lines = task.update_after_epoch(model, {"M": np.array([0.5, 0.7])})
    assert float(began.learning_rate(fell.g.opt_state)) == pytest.approx(2e-4)
    assert float(fell.extra["m_previous"]) == pytest.approx(0.6)


# ----------------------------------------------------------------------------- through the loop

def _assert_outputs_and_samples(name, workdir):
    for output in (f"{name}_epoch001.png", f"{name}_generate_animation.gif", f"{name}_loss.png",
                   f"{name}_history.json"):
        assert (workdir / output).exists(), output
    task, _ = restore_run(str(workdir), devices=jax.devices()[:1])
    assert task.name == name and type(task.config) is gan_variants.OBJECTIVES[name].config_class
    samples = sample_images(str(workdir), 3, seed=0, devices=jax.devices()[:1])
    assert samples.shape == (3, 28, 28, 1) and np.all(np.abs(samples) <= 1)
    assert np.std(samples) > 0  # G's images, not a constant


def _resume_matches(name, tiny_images, tmp_path, **settings):
    """Two epochs of two steps, uninterrupted and stopped after one then resumed."""
    task_cls = gan_variants.task_class(name)
    config = task_cls.config_class(**{**TINY, "epochs": 2, **settings})
    images = tiny_images[:32]
    full, full_history = _train(task_cls(config), images, tmp_path / "full")
    _train(task_cls(dataclasses.replace(config, epochs=1)), images, tmp_path / "half")
    logs = []
    resumed, history = _train(task_cls(config), images, tmp_path / "half", log=logs.append)
    assert any("Resuming from the checkpoint of epoch 1" in line for line in logs)
    for a, b in zip(host_leaves(resumed), host_leaves(full)):
        np.testing.assert_array_equal(a, b)
    assert history.metrics == full_history.metrics
    _assert_outputs_and_samples(name, tmp_path / "half")
    return logs


def test_wgan_resume_is_bit_identical(tiny_images, tmp_path):
    # G steps in both epochs; the moving average of G is checkpointed and resumed too
    _resume_matches("WGAN", tiny_images, tmp_path, n_critic=2, g_ema=0.9)


def test_began_resume_is_bit_identical(tiny_images, tmp_path):
    logs = _resume_matches("BEGAN", tiny_images, tmp_path)
    first = next(line for line in logs if line.startswith("Epoch: "))
    assert first.startswith("Epoch: [ 2] [   1/   2] D_loss: ")
    assert ", M: " in first and ", k: " in first  # the reference's BEGAN log line
    assert any(line.startswith("M_pre: ") for line in logs)


# Through the loop, restored and sampled: GAN in test_train_loop.py, WGAN (a critic with
# n_critic) and BEGAN (an autoencoder D with state) above, a penalty in the hinge test below;
# WGAN_GP's and EBGAN's steps on one and eight devices above.
@pytest.mark.parametrize("name", ["LSGAN", "DRAGAN", "RaGAN"])
def test_every_variant_trains_and_samples(name, tiny_images, tmp_path):
    logs = []
    _, history = _train(_task(name), tiny_images[:32], tmp_path / name, log=logs.append)
    assert all(len(v) == 2 and np.all(np.isfinite(v)) for v in history.metrics.values())
    first = next(line for line in logs if line.startswith("Epoch: "))
    assert first.startswith("Epoch: [ 1] [   1/   2] D_loss: ")
    _assert_outputs_and_samples(name, tmp_path / name)


# ----------------------------------------------------------------------------- a new variant

def _hinge_d(real_out, fake_out, ctx):
    return jnp.mean(jax.nn.relu(1.0 - real_out)) + jnp.mean(jax.nn.relu(1.0 + fake_out))


def _hinge_g(fake_out, ctx):
    return -jnp.mean(fake_out)


def _real_points(real, fake, key, config):
    return real


def test_a_new_objective_is_two_functions_and_one_entry(tiny_images, tmp_path):
    """A hinge-loss GAN with a gradient penalty at the real images, defined in this file:
    registered, it trains through the loop, restores and samples."""
    @dataclasses.dataclass(frozen=True)
    class HingeConfig(GANConfig):
        gp_weight: float = 1.0

    objective = Objective("HINGE_TEST", _hinge_d, _hinge_g, config_class=HingeConfig,
                          penalty=Penalty(_real_points, lambda config: config.gp_weight))
    gan_variants.register(objective)
    try:
        task_cls = gan_variants.task_class("HINGE_TEST")
        assert issubclass(task_cls, GANTask) and task_cls.objective is objective
        state, history = _train(task_cls(HingeConfig(**TINY)), tiny_images[:32],
                                tmp_path / "hinge")
        d_loss = history.metrics["D_loss"]
        assert len(d_loss) == 2 and all(math.isfinite(v) for v in d_loss)
        task, _ = restore_run(str(tmp_path / "hinge"), devices=jax.devices()[:1])
        assert task.objective is objective
        assert sample_images(str(tmp_path / "hinge"), 2).shape == (2, 28, 28, 1)
    finally:
        del gan_variants.OBJECTIVES["HINGE_TEST"]
        gan_variants.task_class.cache_clear()
    shutil.rmtree(tmp_path / "hinge")


def test_a_discriminator_of_ones_own_gets_the_gans_width_dtype_and_forms():
    """An Objective's own D module, declaring the three fields GANTask passes it (conv_forms,
    dtype, width), is built with the GAN's settings."""
    import flax.linen as nn

    class LinearD(nn.Module):
        conv_forms: str = "canonical"
        dtype: object = jnp.float32
        width: float = 1.0

        @nn.compact
        def __call__(self, x, train, groups=1):
            hidden = nn.Dense(round(64 * self.width), dtype=self.dtype)(x.reshape(len(x), -1))
            return nn.Dense(1)(nn.relu(hidden))[:, 0]

    task_cls = type("LinearGAN", (GANTask,), {
        "objective": Objective("LINEAR_D_TEST", gan_variants.OBJECTIVES["GAN"].d_loss,
                               gan_variants.OBJECTIVES["GAN"].g_loss, discriminator=LinearD),
        "name": "LINEAR_D_TEST"})
    task = task_cls(GANConfig(**{**TINY, "width": 0.5, "conv_forms": "xla"}))
    assert (task.discriminator.width, task.discriminator.conv_forms) == (0.5, "xla")
    model = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    assert model.d.params["Dense_0"]["kernel"].shape == (28 * 28, 32)
    assert model.g.params["Dense_0"]["kernel"].shape == (62, 512)  # G at the same width
