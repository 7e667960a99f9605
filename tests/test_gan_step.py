"""The GAN train step: what it changes, that it is the reference's maths, and that sharding it
over eight devices computes the update of one."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    BIASES_BEFORE_BATCHNORM,
    FAST_COMPILE,
    ONE_THREAD,
    OPTIMISED,
    REPO,
    assert_gan_models_close,
)

from jaxgen import parallel
from jaxgen.train import loop, program
from jaxgen.train.gan import GANConfig, GANTask
from jaxgen.train.state import init_state


def _images(tiny_images, n=16):
    return jnp.asarray(tiny_images[:n], jnp.float32) / 127.5 - 1.0


def _changed(a, b):
    return [not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]


def test_one_step_changes_both_models(tiny_images):
    task = GANTask(GANConfig(batch_size=16))
    model = jax.jit(task.init)(jax.random.PRNGKey(0))
    with jax.set_mesh(parallel.make_mesh(jax.devices()[:1])):
        new, metrics = jax.jit(task.train_step)(model, _images(tiny_images), jax.random.PRNGKey(1))
    for net in ("g", "d"):
        old_net, new_net = getattr(model, net), getattr(new, net)
        assert all(_changed(old_net.params, new_net.params)), net  # every parameter moved
        assert all(_changed(old_net.batch_stats, new_net.batch_stats)), net
    assert set(metrics) == {"D_loss", "G_loss"}
    assert all(np.isfinite(float(v)) for v in metrics.values())


def _reference_step(task, model, x, key):
    """The reference's GAN.py step written out plainly: two G forwards, three D forwards, the
    direct (non-sub-pixel) transposed convolution."""
    from jaxgen.models.gan import Discriminator, Generator

    G, D = Generator(conv_forms="xla"), Discriminator()
    g, d = model.g, model.d
    z = jax.random.uniform(key, (x.shape[0], task.config.z_dim))
    G_, g_bs = G.apply({"params": g.params, "batch_stats": g.batch_stats}, z, train=True,
                       mutable=["batch_stats"])

    def d_loss(dp):
        r, bs = D.apply({"params": dp, "batch_stats": d.batch_stats}, x, train=True,
                        mutable=["batch_stats"])
        f, bs = D.apply({"params": dp, "batch_stats": bs["batch_stats"]},
                        jax.lax.stop_gradient(G_), train=True, mutable=["batch_stats"])
        return (optax.sigmoid_binary_cross_entropy(r, jnp.ones_like(r)).mean()
                + optax.sigmoid_binary_cross_entropy(f, jnp.zeros_like(f)).mean()), bs

    (dl, d_bs), dg = jax.value_and_grad(d_loss, has_aux=True)(d.params)
    upd, d_opt = task.tx_d.update(dg, d.opt_state, d.params)
    d_params = optax.apply_updates(d.params, upd)

    def g_loss(gp):
        G2, g_bs2 = G.apply({"params": gp, "batch_stats": g_bs["batch_stats"]}, z, train=True,
                            mutable=["batch_stats"])
        f, bs = D.apply({"params": d_params, "batch_stats": d_bs["batch_stats"]}, G2,
                        train=True, mutable=["batch_stats"])
        return optax.sigmoid_binary_cross_entropy(f, jnp.ones_like(f)).mean(), (g_bs2, bs)

    (gl, (g_bs2, d_bs2)), gg = jax.value_and_grad(g_loss, has_aux=True)(g.params)
    upd, g_opt = task.tx_g.update(gg, g.opt_state, g.params)
    return (optax.apply_updates(g.params, upd), g_bs2["batch_stats"], d_params,
            d_bs2["batch_stats"], dl, gl)


def test_step_is_the_reference_step(tiny_images):
    task = GANTask(GANConfig(batch_size=16))
    model = jax.jit(task.init)(jax.random.PRNGKey(0))
    x, key = _images(tiny_images), jax.random.PRNGKey(3)
    with jax.set_mesh(parallel.make_mesh(jax.devices()[:1])):
        new, metrics = jax.jit(task.train_step)(model, x, key)
    g_params, g_bs, d_params, d_bs, d_loss, g_loss = jax.jit(
        lambda m, x, k: _reference_step(task, m, x, k))(model, x, key)
    # One step's losses: changes that only change rounding (1 vs 8 devices, XLA options; see
    # helpers.assert_gan_models_close) stay well inside rel 1e-5; a wrong update does not.
    assert float(metrics["D_loss"]) == pytest.approx(float(d_loss), rel=1e-5)
    assert float(metrics["G_loss"]) == pytest.approx(float(g_loss), rel=1e-5)
    reference = new.replace(g=new.g.replace(params=g_params, batch_stats=g_bs),
                            d=new.d.replace(params=d_params, batch_stats=d_bs))
    assert_gan_models_close(new, reference, lr=task.config.lr_d, images=x)


def test_eight_devices_match_one(tiny_images, tmp_path):
    """One epoch of one step through the whole loop (on-device data, shuffle, sharded batch,
    keys) on 8 devices and on 1. One update is compared: GAN training amplifies rounding
    differences from step to step, whatever the device count, so later steps are not."""
    config = GANConfig(epochs=1, batch_size=16, log_every=1)
    images = tiny_images[:16]
    runs = {}
    for n in (1, 8):
        mesh = parallel.make_mesh(jax.devices()[:n])
        state, history = loop.train(GANTask(config), images, str(tmp_path / f"d{n}"), mesh,
                                    log=lambda _: None)
        runs[n] = (parallel.to_host(state.model), history)
    (one, h1), (eight, h8) = runs[1], runs[8]
    for k in ("D_loss", "G_loss"):
        assert len(h8.metrics[k]) == 1  # one step's losses: rounding apart, inside rtol 1e-5
        np.testing.assert_allclose(h8.metrics[k], h1.metrics[k], rtol=1e-5)
    assert_gan_models_close(eight, one, lr=config.lr_d,
                            images=jnp.asarray(images, jnp.float32) / 127.5 - 1)


def _ynn_convolutions(hlo: str) -> int:
    """Convolutions that the compiled program ``hlo`` runs inside YNNPACK fusions."""
    called = {line.split("calls=")[1].split(",")[0].strip("%")
              for line in hlo.splitlines() if '"__ynn_fusion"' in line and "calls=" in line}
    count, current = 0, None
    for line in hlo.splitlines():
        if line.endswith("{") and not line.startswith(" "):
            current = line.split()[0].strip("%")
            current = line.split()[1].strip("%") if current == "ENTRY" else current
        elif current in called and " convolution(" in line:
            count += 1
    return count


def _keep_gradients() -> optax.GradientTransformation:
    """An optimiser that leaves the parameters as they are and keeps the gradients as its state."""
    return optax.GradientTransformation(
        lambda params: jax.tree.map(jnp.zeros_like, params),
        lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def _gradient_step(tiny_images, mesh, compiler_options):
    """One train step of the loop's program on 16 images, its optimisers replaced by
    _keep_gradients, compiled with ``compiler_options`` (``None``: jaxgen's, ``{}``: XLA's
    defaults): the program and its (state, metrics), the state holding the gradients."""
    task = GANTask(GANConfig(batch_size=16))
    task.tx_d = task.tx_g = _keep_gradients()
    with jax.set_mesh(mesh):
        state = jax.jit(lambda: init_state(task, 0))()
        data = parallel.put_replicated(tiny_images[:16], mesh)
        perm = program.build_permutation(mesh, 16)(state.rng, jnp.int32(1))
        step = program.build_train_step(task, mesh, 1, compiler_options=compiler_options)
        compiled = step.lower(state, data, perm).compile()
        return compiled, parallel.to_host(compiled(state, data, perm))


def test_cpu_compiler_options_keep_the_maths(tiny_images, monkeypatch):
    """jaxgen compiles its train step on CPU with YNNPACK for dots only; the same step compiled
    with XLA's defaults computes the same losses and gradients. The gradients are compared
    before any optimiser sees them (Adam would turn rounding noise in near-zero gradients into
    +-lr steps). Both are compiled as a user's run compiles them, fully optimised and on XLA's
    thread pool: in a process of its own, as the suite compiles for speed (tests/conftest.py)."""
    if not os.environ.get(OPTIMISED):
        flags = os.environ["XLA_FLAGS"].replace(FAST_COMPILE, "").replace(
            ONE_THREAD, "").replace("--xla_force_host_platform_device_count=8", "")
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"{__file__}::test_cpu_compiler_options_keep_the_maths"],
            env={**os.environ, OPTIMISED: "1", "XLA_FLAGS": flags}, capture_output=True,
            text=True, timeout=600, cwd=REPO)
        passed = re.search(r"^1 passed", proc.stdout, re.MULTILINE)
        assert proc.returncode == 0 and passed, proc.stdout[-3000:]
        return
    mesh = parallel.make_mesh(jax.devices()[:1])
    assert parallel.compiler_options(mesh) == parallel.CPU_COMPILER_OPTIONS
    _, (ours, m_ours) = _gradient_step(tiny_images, mesh, None)
    _, (xla, m_xla) = _gradient_step(tiny_images, mesh, {})
    for k in ("D_loss", "G_loss"):  # rounding apart, inside rtol 1e-5
        np.testing.assert_allclose(m_ours[k], m_xla[k], rtol=1e-5)
    for net in ("g", "d"):
        grads = jax.tree_util.tree_leaves_with_path(getattr(ours.model, net).opt_state)
        xla_grads = jax.tree.leaves(getattr(xla.model, net).opt_state)
        net_scale = max(np.abs(g).max() for g in xla_grads)
        for (path, g), g_xla in zip(grads, xla_grads):
            name = jax.tree_util.keystr(path)
            # A bias right before a BatchNorm has a zero gradient in exact arithmetic: what is
            # computed is rounding noise, compared on the scale of the network's gradients.
            scale = net_scale if name in BIASES_BEFORE_BATCHNORM[net] else np.abs(g_xla).max()
            assert scale > 0, (net, name)
            # Ten times the differences measured (docs/testing.md, tolerances).
            np.testing.assert_allclose(g, g_xla, rtol=0, atol=1e-4 * scale, err_msg=net + name)
    # A user's own XLA_FLAGS setting of the option wins over jaxgen's.
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
    assert parallel.compiler_options(mesh) is None


@pytest.mark.perf
def test_cpu_compiler_options_reach_the_compiler(tiny_images):
    """The compiled step runs no convolution in a YNNPACK fusion with jaxgen's options, and
    some with XLA's defaults (compiled-HLO text: the fusion's name may change with XLA)."""
    mesh = parallel.make_mesh(jax.devices()[:1])
    convs = {name: _ynn_convolutions(_gradient_step(tiny_images, mesh, options)[0].as_text())
             for name, options in (("jaxgen", None), ("xla", {}))}
    assert convs["jaxgen"] == 0 and convs["xla"] > 0, convs


def test_grouped_batchnorm_is_batchnorm_per_interleaved_sub_batch():
    """groups=2 on interleaved rows equals Flax's BatchNorm (two-pass variance) called on each
    sub-batch in turn: outputs, the running averages after both, and gradients."""
    import flax.linen as nn

    from jaxgen.models.layers import GroupedBatchNorm

    flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5,
                           use_fast_variance=False)
    # Inputs made with numpy: each eager jax op would be compiled for its shape.
    rng = np.random.default_rng(0)
    a, b = (3.0 + rng.normal(size=(2, 6, 4, 4, 5))).astype(np.float32)  # two sub-batches of 6
    both = np.stack([a, b], axis=1).reshape(12, 4, 4, 5)  # row 2n + g
    stats = {"mean": rng.normal(size=5).astype(np.float32),
             "var": 1.0 + np.arange(5, dtype=np.float32)}
    params = {"scale": 1.0 + np.arange(5, dtype=np.float32) / 10,
              "bias": np.arange(5, dtype=np.float32) - 2}

    def separate(p):
        ya, mut = flax_bn.apply({"params": p, "batch_stats": stats}, a, mutable=["batch_stats"])
        yb, mut = flax_bn.apply({"params": p, "batch_stats": mut["batch_stats"]}, b,
                                mutable=["batch_stats"])
        return jnp.stack([ya, yb], axis=1).reshape(both.shape), mut["batch_stats"]

    def grouped(p, groups=2):
        y, mut = GroupedBatchNorm(use_running_average=False, groups=groups).apply(
            {"params": p, "batch_stats": stats}, both, mutable=["batch_stats"])
        return y, mut["batch_stats"]

    # jitted: the same maths, without the seconds of op-by-op dispatch
    separate, grouped = jax.jit(separate), jax.jit(grouped, static_argnames="groups")
    (y1, s1), (y2, s2) = separate(params), grouped(params)
    np.testing.assert_allclose(y2, y1, rtol=1e-5, atol=1e-5)
    for k in ("mean", "var"):
        np.testing.assert_allclose(s2[k], s1[k], rtol=1e-5, atol=1e-6)
    weights = np.sin(np.arange(both.size, dtype=np.float32)).reshape(both.shape)
    loss = lambda f: lambda p: (f(p)[0] * weights).sum()  # noqa: E731
    g1, g2 = jax.jit(jax.grad(loss(separate)))(params), jax.jit(jax.grad(loss(grouped)))(params)
    for k in params:
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-4, atol=1e-4)
    # One group is Flax's BatchNorm on the whole batch, in training and in inference mode.
    y, s = grouped(params, groups=1)
    y_ref, mut = jax.jit(lambda p: flax_bn.apply({"params": p, "batch_stats": stats}, both,
                                                 mutable=["batch_stats"]))(params)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s["var"], mut["batch_stats"]["var"], rtol=1e-5)
    variables = {"params": params, "batch_stats": stats}
    np.testing.assert_allclose(
        jax.jit(GroupedBatchNorm(use_running_average=True).apply)(variables, both),
        jax.jit(flax_bn.clone(use_running_average=True).apply)(variables, both),
        rtol=1e-5, atol=1e-5)
