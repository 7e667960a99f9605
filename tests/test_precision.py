"""The compute policies an accelerator chooses among: --dtype bfloat16, --precision, and the two
convolution forms. Each must compute the same GAN step as the float32 default, to its own
rounding; bfloat16 must stay finite for each kind of GAN step of the collection."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_gan_models_close, host_leaves, run_in_process

from jaxgen import parallel
from jaxgen.models.layers import CONV_FORMS, resolve_conv_forms
from jaxgen.train import gan_variants
from jaxgen.train.gan import GANConfig, GANTask


def _images(tiny_images, n=16):
    return jnp.asarray(tiny_images[:n], jnp.float32) / 127.5 - 1.0


def _one_step(task, model, images, **kwargs):
    with jax.set_mesh(parallel.make_mesh(jax.devices()[:1])):
        return jax.jit(task.train_step)(model, images, jax.random.PRNGKey(3), **kwargs)


def test_the_two_convolution_forms_take_the_same_step(tiny_images):
    canonical = GANTask(GANConfig(batch_size=16, conv_forms="canonical"))
    xla = GANTask(GANConfig(batch_size=16, conv_forms="xla"))
    model = jax.jit(canonical.init)(jax.random.PRNGKey(0))
    x = _images(tiny_images)
    a, metrics_a = _one_step(canonical, model, x)
    b, metrics_b = _one_step(xla, model, x)
    for name in metrics_a:
        assert float(metrics_a[name]) == pytest.approx(float(metrics_b[name]), rel=1e-5)
    assert_gan_models_close(a, b, lr=canonical.config.lr_d, images=x)


ON_CPU = pytest.mark.skipif(jax.default_backend() != "cpu", reason="what a CPU computes")


@ON_CPU
def test_auto_forms_are_canonical_on_cpu_and_names_are_checked():
    assert resolve_conv_forms("auto") == "canonical"
    assert {resolve_conv_forms(f) for f in CONV_FORMS} == set(CONV_FORMS)
    with pytest.raises(ValueError, match="conv_forms must be one of"):
        resolve_conv_forms("direct")


def test_auto_forms_follow_the_mesh_being_compiled_for_not_the_default_backend(monkeypatch):
    """On a machine whose default backend is an accelerator, a step traced under a CPU mesh
    (``--accelerator cpu``) still gets the CPU's forms; without a mesh, the default backend's."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert resolve_conv_forms("auto") == "xla"
    traced = []
    with jax.set_mesh(parallel.make_mesh(jax.devices("cpu")[:1])):  # as the loop traces
        jax.jit(lambda x: traced.append(resolve_conv_forms("auto")) or x)(jnp.zeros(1))
    assert traced == ["canonical"]


@ON_CPU
def test_highest_precision_takes_the_default_step_on_cpu(tiny_images):
    """XLA:CPU multiplies float32 in float32 at every precision: the setting changes what the
    step asks of an accelerator only."""
    default = GANTask(GANConfig(batch_size=16))
    highest = GANTask(GANConfig(batch_size=16, precision="highest"))
    model = jax.jit(default.init)(jax.random.PRNGKey(0))
    x = _images(tiny_images)
    a, metrics_a = _one_step(default, model, x)
    with jax.default_matmul_precision("highest"):
        b, metrics_b = _one_step(highest, model, x)
    for name in metrics_a:
        assert float(metrics_a[name]) == pytest.approx(float(metrics_b[name]), rel=1e-5)
    assert_gan_models_close(a, b, lr=default.config.lr_d, images=x)


def test_bfloat16_step_keeps_float32_state_and_the_float32_losses(tiny_images):
    f32 = GANTask(GANConfig(batch_size=16))
    bf16 = GANTask(GANConfig(batch_size=16, dtype="bfloat16"))
    model = jax.jit(f32.init)(jax.random.PRNGKey(0))
    assert jax.tree.structure(model) == jax.tree.structure(jax.jit(bf16.init)(
        jax.random.PRNGKey(0)))  # the same checkpoint layout
    x = _images(tiny_images)
    a, metrics_a = _one_step(f32, model, x)
    b, metrics_b = _one_step(bf16, model, x)
    # parameters, statistics and optimiser states stay as float32 training has them
    assert [leaf.dtype for leaf in jax.tree.leaves(b)] == [leaf.dtype for leaf in
                                                           jax.tree.leaves(a)]
    # bfloat16 keeps 8 bits of mantissa: the losses agree to about 1%, not to float32's 1e-5
    for name in metrics_a:
        assert float(metrics_b[name]) == pytest.approx(float(metrics_a[name]), rel=3e-2)
    # and its samples are the float32 model's to bfloat16's rounding
    z = jax.random.uniform(jax.random.PRNGKey(5), (16, 62))
    np.testing.assert_allclose(bf16.generate(model.g, z), f32.generate(model.g, z), atol=3e-2)


# Each kind of GAN step in bfloat16 (the vanilla GAN's above): the penalised critics (their
# second derivatives are where half precision is known to turn NaN), the autoencoder Ds, a
# class head fed labels, and infoGAN's third optimiser. LSGAN, WGAN and CGAN run the vanilla
# GAN's networks under other losses of the same outputs.
BFLOAT16_KINDS = ["WGAN_GP", "DRAGAN", "EBGAN", "BEGAN", "ACGAN", "infoGAN"]


@pytest.mark.parametrize("name", BFLOAT16_KINDS)
def test_each_kind_of_gan_stays_finite_in_bfloat16(name, tiny_images):
    cls = gan_variants.task_class(name)
    task = cls(cls.config_class(batch_size=8, dtype="bfloat16"))
    model = jax.jit(task.init)(jax.random.PRNGKey(0))
    x = _images(tiny_images, 8)
    kwargs = {}
    if task.needs_labels:
        kwargs["labels"] = jnp.asarray(np.arange(8) % 10, jnp.int32)
    with jax.set_mesh(parallel.make_mesh(jax.devices()[:1])):
        step = jax.jit(task.train_step)
        for i in range(2):
            if task.needs_step_in_epoch:
                kwargs["step_in_epoch"] = jnp.int32(i)
            model, metrics = step(model, x, jax.random.PRNGKey(i), **kwargs)
    assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
    assert all(np.isfinite(leaf).all() for leaf in host_leaves(model))


def test_dtype_and_precision_flags_refuse_unknown_values(tmp_path, capsys):
    for flag, value in (("--dtype", "float16"), ("--precision", "fastest"),
                        ("--conv-forms", "direct")):
        code, _, err = run_in_process("gan_mnist.py", flag, value, "--workdir", tmp_path / "w",
                                      capsys=capsys)
        assert code == 2, err
        assert f"argument {flag}: invalid choice: '{value}'" in err.splitlines()[-1]
    assert not (tmp_path / "w").exists()


def test_settings_of_runs_saved_before_them_read_as_float32_default_auto_full_width():
    saved = dataclasses.asdict(GANConfig(width=0.5))
    for name in ("dtype", "precision", "conv_forms", "width"):
        del saved[name]
    config = GANConfig.from_dict(saved)
    assert (config.dtype, config.precision, config.conv_forms, config.width) == (
        "float32", "default", "auto", 1.0)
