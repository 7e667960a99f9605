"""The conditional GANs (CGAN, ACGAN, infoGAN): labels and codes into G, D's label planes and
heads, their losses by hand, infoGAN's Q head learning its codes, label accuracy, sharding,
resume, and the scripts (sampling a class, the 10x10 grid, the code sweeps, bad --label)."""

import contextlib
import dataclasses
import io
import runpy
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import WIDTH, grid_tiles, host_leaves, run_in_process, script, write_idx_dataset

from jaxgen import metrics, parallel
from jaxgen.runs.restore import restore_run
from jaxgen.train import gan_variants, loop
from jaxgen.train.gan_objective import LossContext

TINY = dict(epochs=1, batch_size=16, log_every=1, width=WIDTH)


def _task(name, **settings):
    cls = gan_variants.task_class(name)
    return cls(cls.config_class(**{**TINY, **settings}))


def _one_device():
    return jax.set_mesh(parallel.make_mesh(jax.devices()[:1]))


# ----------------------------------------------------------------------------- G and D

def test_the_label_steers_g_and_the_same_label_and_z_give_the_same_image():
    task = _task("ACGAN", width=1.0)  # the reference's G, for which the bound below is set
    model = jax.jit(task.init)(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(3)  # the same z for every call below
    sample = jax.jit(task.sample_images, static_argnums=2)  # one program for both calls
    with _one_device():
        a = sample(model, key, 4, jnp.array([3, 3, 5, 5]))
        b = sample(model, key, 4, jnp.array([3, 4, 5, 6]))
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_array_equal(a[[0, 2]], b[[0, 2]])  # same z, same label: same image
    for i in (1, 3):  # same z, another label: another image
        assert np.max(np.abs(a[i] - b[i])) > 1e-3


@pytest.mark.parametrize("name,g_inputs,d_channels,d_outputs", [
    ("CGAN", 62 + 10, 1 + 10, 1),  # D: the image and 10 label planes
    ("ACGAN", 62 + 10, 1, 1 + 10),  # D: real/fake and 10 class logits
    ("infoGAN", 62 + 2 + 10, 1, 1 + 2 + 10),  # D: real/fake and the Q head
])
def test_g_inputs_and_d_planes_and_heads_have_the_references_shapes(name, g_inputs,
                                                                    d_channels, d_outputs):
    task = _task(name, width=1.0)
    # Shapes only: traced, not computed (eager, each op would be compiled).
    model = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    assert model.g.params["Dense_0"]["kernel"].shape == (g_inputs, 1024)
    assert model.d.params["Conv_0"]["kernel"].shape == (4, 4, d_channels, 64)
    assert model.d.params["Dense_1"]["kernel"].shape == (1024, d_outputs)
    kwargs = {"condition": jnp.eye(10)[:3]} if name == "CGAN" else {}
    out = jax.eval_shape(lambda v: task.discriminator.apply(
        v, jnp.zeros((3, 28, 28, 1)), train=False, **kwargs), model.d.variables())
    shapes = [o.shape for o in out] if isinstance(out, tuple) else [out.shape]
    assert shapes == ([(3,)] if d_outputs == 1 else [(3,), (3, d_outputs - 1)])


def test_cgan_d_sees_the_label():
    task = _task("CGAN")
    model = jax.jit(task.init)(jax.random.PRNGKey(0))
    x = jnp.zeros((2, 28, 28, 1))
    apply = lambda y: task.discriminator.apply(model.d.variables(), x, train=False,  # noqa
                                               condition=jax.nn.one_hot(y, 10))
    assert float(jnp.max(jnp.abs(apply(jnp.array([1, 2])) - apply(jnp.array([1, 7]))))) > 0
    assert float(apply(jnp.array([1, 2]))[0]) == float(apply(jnp.array([1, 7]))[0])


# ----------------------------------------------------------------------------- losses by hand

def _bce(logit, target):
    p = 1 / (1 + np.exp(-logit))
    return -(target * np.log(p) + (1 - target) * np.log(1 - p))


def _ce(logits, label):
    return -(logits[label] - np.log(np.sum(np.exp(logits))))


def test_acgan_losses_by_hand():
    real = (jnp.array([2.0, -1.0]), jnp.array([[1.0, 0.0, 0.0], [0.0, 3.0, 1.0]]))
    fake = (jnp.array([0.5, 0.0]), jnp.array([[0.0, 2.0, 0.0], [1.0, 1.0, 1.0]]))
    labels = jnp.array([0, 2])
    ctx = LossContext(None, None, None, None, labels=labels)
    r_logits, r_cls = map(np.asarray, real)
    f_logits, f_cls = map(np.asarray, fake)
    ce = lambda cls: np.mean([_ce(cls[i], int(labels[i])) for i in range(2)])  # noqa
    d = (np.mean(_bce(r_logits, 1)) + ce(r_cls) + np.mean(_bce(f_logits, 0)) + ce(f_cls))
    g = np.mean(_bce(f_logits, 1)) + ce(f_cls)
    objective = gan_variants.OBJECTIVES["ACGAN"]
    assert float(objective.d_loss(real, fake, ctx)) == pytest.approx(d, rel=1e-5)
    assert float(objective.g_loss(fake, ctx)) == pytest.approx(g, rel=1e-5)


def test_infogan_losses_read_the_logit_from_column_0_and_the_codes_from_the_q_head():
    objective = gan_variants.OBJECTIVES["infoGAN"]
    # Q head: 2 continuous codes, then 3 category logits (a 3-way code, for the arithmetic)
    q = jnp.array([[0.5, -0.5, 1.0, 0.0, 0.0], [0.0, 0.2, 0.0, 0.0, 2.0]])
    real = (jnp.array([1.5, -0.5]), q)
    fake = (jnp.array([-1.0, 0.3]), q)
    labels, continuous = jnp.array([0, 1]), jnp.array([[1.0, -1.0], [0.0, 0.0]])
    ctx = LossContext(None, None, None, None, labels=labels, continuous=continuous)
    assert float(objective.d_loss(real, fake, ctx)) == pytest.approx(
        np.mean(_bce(np.array([1.5, -0.5]), 1)) + np.mean(_bce(np.array([-1.0, 0.3]), 0)),
        rel=1e-5)
    assert float(objective.g_loss(fake, ctx)) == pytest.approx(
        np.mean(_bce(np.array([-1.0, 0.3]), 1)), rel=1e-5)
    q_np = np.asarray(q)
    ce = np.mean([_ce(q_np[0, 2:], 0), _ce(q_np[1, 2:], 1)])
    mse = np.mean((q_np[:, :2] - np.asarray(continuous)) ** 2)  # (0.25+0.25+0+0.04)/4
    assert float(objective.info_loss(fake, ctx)) == pytest.approx(ce + mse, rel=1e-5)


# ----------------------------------------------------------------------------- infoGAN's Q

def test_infogans_q_head_learns_its_codes(tiny_images):
    """On the tiny images, the information loss's third Adam teaches D's Q head to read back
    the codes G was given: far above chance for the category, and the continuous codes' error
    well below their variance (1/3 for U(-1, 1), what predicting 0 would score). At a quarter
    of the reference's width: the narrowest of the tests' widths learns too slowly to be
    judged after 60 steps."""
    task = _task("infoGAN", width=0.25)
    model = jax.jit(task.init)(jax.random.PRNGKey(0))
    images = jnp.asarray(tiny_images[:16], jnp.float32) / 127.5 - 1.0
    step = jax.jit(task.train_step)
    info = []
    with _one_device():
        for i in range(60):
            model, m = step(model, images, jax.random.PRNGKey(i))
            info.append(float(m["info_loss"]))

        @jax.jit  # one program, not one per operation
        def read_back(model, key):
            categories, continuous = task.draw_codes(key, 256)
            z = task.g_input(task.sample_prior(jax.random.fold_in(key, 1), 256), categories,
                             continuous)
            _, q = task.discriminator.apply(model.d.variables(), task.generate(model.g, z),
                                            train=False)
            return q, categories, continuous

        q, categories, continuous = read_back(model, jax.random.PRNGKey(1000))
    accuracy = float(jnp.mean(jnp.argmax(q[:, 2:], -1) == categories))
    mse = float(jnp.mean((q[:, :2] - continuous) ** 2))
    assert np.mean(info[-10:]) < 0.5 * np.mean(info[:5]), info
    assert accuracy > 0.5 and mse < 0.25, (accuracy, mse)


def test_infogan_steps_the_information_loss_with_a_third_adam_over_g_and_d(tiny_images):
    task = _task("infoGAN")
    model = jax.jit(task.init)(jax.random.PRNGKey(0))
    images = jnp.asarray(tiny_images[:16], jnp.float32) / 127.5 - 1.0
    with _one_device():
        new, metrics = jax.jit(task.train_step)(model, images, jax.random.PRNGKey(1))
    before, after = model.extra["info_opt"], new.extra["info_opt"]
    assert isinstance(after[0], optax.ScaleByAdamState)
    assert int(after[0].count) == int(before[0].count) + 1
    # its moments cover G's parameters and D's (the pair), and the update reached both
    g_mu, d_mu = after[0].mu
    assert jax.tree.structure(g_mu) == jax.tree.structure(model.g.params)
    assert jax.tree.structure(d_mu) == jax.tree.structure(model.d.params)
    assert float(jnp.max(jnp.abs(g_mu["Dense_0"]["kernel"]))) > 0
    assert float(jnp.max(jnp.abs(d_mu["Dense_1"]["kernel"]))) > 0
    assert set(metrics) == {"D_loss", "G_loss", "info_loss"}


# ----------------------------------------------------------------------------- label accuracy

def test_label_accuracy_of_a_classifier_with_a_known_answer():
    probs = np.eye(4)[[0, 1, 2, 3, 0, 1]]  # the classifier's calls: 0 1 2 3 0 1
    assert metrics.label_accuracy(probs, np.array([0, 1, 2, 3, 0, 1])) == 1.0
    assert metrics.label_accuracy(probs, np.array([0, 1, 2, 3, 3, 3])) == pytest.approx(4 / 6)


def test_matched_label_accuracy_maps_each_code_to_its_most_frequent_class():
    # code 0 is drawn as class 2 three times and class 1 once; code 1 always as class 0
    probs = np.eye(3)[[2, 2, 2, 1, 0, 0]]
    codes = np.array([0, 0, 0, 0, 1, 1])
    accuracy, mapping = metrics.matched_label_accuracy(probs, codes, num_codes=3)
    assert mapping == [2, 0, -1]  # code 2 never drawn
    assert accuracy == pytest.approx(5 / 6)


# ----------------------------------------------------------------------------- the loop

def test_eight_devices_match_one_for_cgan(tiny_images):
    """One CGAN step (label planes through D's grouped pass) on eight devices and on one."""
    task = _task("CGAN")
    model = jax.jit(task.init)(jax.random.PRNGKey(0))
    images = jnp.asarray(tiny_images[:16], jnp.float32) / 127.5 - 1.0
    labels = jnp.arange(16) % 10
    step = jax.jit(task.train_step)
    results = []
    for n in (1, 8):
        with jax.set_mesh(parallel.make_mesh(jax.devices()[:n])):
            results.append(step(model, images, jax.random.PRNGKey(1), labels=labels))
    (a, m1), (b, m8) = results
    for k in m1:
        assert float(m8[k]) == pytest.approx(float(m1[k]), rel=1e-4, abs=1e-5), k
    lr = task.config.lr_d
    for x, y in zip(jax.tree.leaves(parallel.to_host(a)), jax.tree.leaves(parallel.to_host(b))):
        assert np.max(np.abs(np.asarray(x, np.float64) - y)) <= 2 * lr + 1e-4 * np.max(np.abs(x))


def test_infogan_resume_is_bit_identical_and_draws_the_code_sweeps(tiny_images, tmp_path,
                                                                  capsys):
    """Two epochs uninterrupted, and one then resumed: the same state (G, D and the three
    optimiser states), the same history; the last epoch draws each continuous code's sweep, and
    sample.py --kind codes draws them from the checkpoint."""
    cls = gan_variants.task_class("infoGAN")
    config = cls.config_class(**{**TINY, "epochs": 2})
    images, mesh = tiny_images[:32], parallel.make_mesh(jax.devices()[:1])
    quiet = lambda _: None  # noqa: E731
    full, full_history = loop.train(cls(config), images, str(tmp_path / "full"), mesh, quiet)
    loop.train(cls(dataclasses.replace(config, epochs=1)), images, str(tmp_path / "half"), mesh,
               quiet)
    resumed, history = loop.train(cls(config), images, str(tmp_path / "half"), mesh, quiet)
    for a, b in zip(host_leaves(resumed), host_leaves(full)):
        np.testing.assert_array_equal(a, b)
    assert history.metrics == full_history.metrics and "info_loss" in history.metrics
    for code in ("code1", "code2"):
        tiles = grid_tiles(tmp_path / "half" / f"infoGAN_{code}.png", 100, ncols=10)
        # along a row the code changes, so do the images; one z for the whole sweep
        assert np.abs(tiles[0].astype(int) - tiles[9]).max() > 0
    tiles = grid_tiles(tmp_path / "half" / "infoGAN_epoch002.png", 100, ncols=10)
    assert np.abs(tiles[0].astype(int) - tiles[1]).max() > 0  # category 0 vs 1, same z
    code, out, err = run_in_process("sample.py", "--workdir", tmp_path / "half", "--kind",
                                    "codes", "--out", tmp_path / "codes.npy", capsys=capsys)
    assert code == 0, err
    sweeps = np.load(tmp_path / "codes.npy")
    assert sweeps.shape == (2, 100, 28, 28, 1) and np.all(np.abs(sweeps) <= 1)
    assert np.abs(sweeps[0] - sweeps[1]).max() > 0  # two codes, two sweeps


# ----------------------------------------------------------------------------- the scripts

@pytest.fixture(scope="module")
def acgan_run(tmp_path_factory):
    """gan_mnist.py --gan-type ACGAN, one epoch on tiny IDX data, in this process (its
    programs compiled once for the tests that read it)."""
    directory = tmp_path_factory.mktemp("acgan")
    data_dir = write_idx_dataset(str(directory / "idx"))
    workdir = directory / "run"
    log = io.StringIO()
    argv, sys.argv = sys.argv, [script("gan_mnist.py"), "--gan-type", "ACGAN", "--data-dir",
                                data_dir, "--epochs", "1", "--batch-size", "16", "--log-every",
                                "2", "--width", str(WIDTH), "--workdir", str(workdir)]
    try:
        with contextlib.redirect_stdout(log):
            runpy.run_path(script("gan_mnist.py"), run_name="__main__")
    finally:
        sys.argv = argv
    return data_dir, workdir, log.getvalue()


def test_acgan_trains_on_the_labels_and_draws_the_class_grid(acgan_run):
    _, workdir, log = acgan_run
    assert "Epoch: [ 1] [   2/   4] D_loss: " in log
    task, state = restore_run(str(workdir), devices=jax.devices()[:1])
    assert task.name == "ACGAN" and task.needs_labels
    tiles = grid_tiles(workdir / "ACGAN_epoch001.png", 100, ncols=10)
    # row i: one z; column j: class j. Drawn again here: within a grey level.
    expected = np.clip(np.rint((np.asarray(task.generate(state.model.g,
                                                         task.fixed_noise(state.rng)))[..., 0]
                                + 1) * 127.5), 0, 255)
    assert np.abs(tiles.astype(int) - expected).max() <= 1
    assert np.abs(tiles[0].astype(int) - tiles[1]).max() > 0  # another class, same z


def test_sample_draws_the_class_asked_for(acgan_run, tmp_path, capsys):
    _, workdir, _ = acgan_run
    out = tmp_path / "sevens.npy"
    code, stdout, err = run_in_process("sample.py", "--workdir", workdir, "--label", 7,
                                       "--num", 5, "--out", out, capsys=capsys)
    assert code == 0, err
    sevens = np.load(out)
    task, state = restore_run(str(workdir), devices=jax.devices()[:1])
    with _one_device():
        again = task.sample_images(state.model, jax.random.fold_in(jax.random.PRNGKey(0), 0), 5,
                                   jnp.full(5, 7))
    np.testing.assert_allclose(sevens, np.asarray(again), atol=2e-4)
    code, _, err = run_in_process("sample.py", "--workdir", workdir, "--num", 6, "--out",
                                  tmp_path / "any.png", capsys=capsys)
    assert code == 0 and (tmp_path / "any.png").exists(), err


def _error_line(capsys, *args):
    code, out, err = run_in_process("sample.py", *args, capsys=capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines and lines[-1].startswith("error: "), (out, err)
    return lines[-1]


@pytest.mark.parametrize("label", [10, -1])
def test_a_label_outside_0_to_9_is_refused(label, acgan_run, tmp_path, capsys):
    _, workdir, _ = acgan_run
    line = _error_line(capsys, "--workdir", workdir, "--label", label, "--out", tmp_path / "x.png")
    assert f"--label must be in 0..9, got {label}" in line
    assert not (tmp_path / "x.png").exists()


def test_code_sweeps_need_an_infogan_run(acgan_run, tmp_path, capsys):
    _, workdir, _ = acgan_run
    line = _error_line(capsys, "--workdir", workdir, "--kind", "codes", "--out", tmp_path / "c.png")
    assert "--kind codes needs an infoGAN run" in line and "holds a ACGAN run" in line
