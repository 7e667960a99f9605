"""The epoch program (--steps-per-call, by default auto: one program per epoch): the steps per
call, the convolution gradients written so that XLA:CPU runs them fast inside the loop, and no
transfer to or from the host while the program runs."""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxgen import parallel
from jaxgen.models.layers import canonical_conv
from jaxgen.train import loop
from jaxgen.train.gan import GANConfig, GANTask
from jaxgen.train.state import init_state
from jaxgen.train.task import TrainConfig, resolve_steps_per_call


def test_auto_is_one_program_per_epoch_and_a_count_is_kept():
    assert resolve_steps_per_call(TrainConfig(), 937) == 937
    assert resolve_steps_per_call(TrainConfig(), 3) == 3
    assert resolve_steps_per_call(TrainConfig(steps_per_call=4), 937) == 4


def test_the_flag_takes_auto_or_a_count():
    parser = argparse.ArgumentParser()
    TrainConfig.add_flags(parser)
    assert parser.parse_args([]).steps_per_call is None  # auto
    assert parser.parse_args(["--steps-per-call", "auto"]).steps_per_call is None
    assert parser.parse_args(["--steps-per-call", "937"]).steps_per_call == 937
    with pytest.raises(SystemExit):
        parser.parse_args(["--steps-per-call", "many"])


@pytest.mark.parametrize("shape,kernel,strides,padding", [
    ((3, 14, 14, 5), (4, 4, 5, 6), (2, 2), ((1, 1), (1, 1))),  # D's 4x4 stride-2 convolutions
    ((3, 7, 7, 5), (3, 3, 5, 8), (1, 1), ((1, 1), (1, 1))),  # G's sub-pixel 3x3 convolutions
    ((2, 9, 8, 3), (4, 4, 3, 2), (2, 2), ((1, 2), (0, 1))),  # odd sizes, uneven padding
])
def test_canonical_convolution_has_laxs_value_and_gradients(shape, kernel, strides, padding):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    w = jax.random.normal(jax.random.PRNGKey(1), kernel)
    dn = ("NHWC", "HWIO", "NHWC")

    def plain(x, w):
        return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)

    def ours(x, w):
        return canonical_conv(x, w, strides, padding, dimension_numbers=dn)

    cotangent = jax.random.normal(jax.random.PRNGKey(2), plain(x, w).shape)
    np.testing.assert_allclose(ours(x, w), plain(x, w), rtol=1e-5, atol=1e-5)
    expected = jax.vjp(plain, x, w)[1](cotangent)
    got = jax.vjp(ours, x, w)[1](cotangent)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def epoch_program(tiny_images):
    """The GAN's program of 2 steps per call on one device, compiled, with its inputs."""
    task = GANTask(GANConfig(batch_size=16, steps_per_call=2))
    mesh = parallel.make_mesh(jax.devices()[:1])
    with jax.set_mesh(mesh):
        state = jax.jit(lambda: init_state(task, 0), out_shardings=parallel.replicated(mesh))()
        data = parallel.put_replicated(tiny_images, mesh)
        perm = loop.build_permutation(mesh, len(tiny_images))(state.rng, jnp.int32(1))
        compiled = loop.build_train_step(task, mesh, 4, 2).lower(state, data, perm).compile()
    return mesh, compiled, state, data, perm


def test_every_convolution_of_the_loop_is_in_the_fast_dimension_order(epoch_program):
    """XLA:CPU rewrites convolutions into NHWC/HWIO order for its fast kernels outside loops
    only; inside the scan, every convolution (forward and both gradients) must already be."""
    _, compiled, *_ = epoch_program
    text = compiled.as_text()
    convolutions = [line for line in text.splitlines() if " convolution(" in line]
    assert len(convolutions) >= 10, len(convolutions)  # G's, D's, forward and backward
    assert any("/while/body/" in line for line in convolutions)
    slow = [line.split("=")[0].strip() for line in convolutions
            if "dim_labels=b01f_01io->b01f" not in line]
    assert not slow, slow


def test_the_epoch_program_moves_nothing_to_or_from_the_host(epoch_program):
    mesh, compiled, state, data, perm = epoch_program
    text = compiled.as_text()
    for op in ("outfeed", "infeed", "send(", "recv(", "callback"):
        assert op not in text, op
    with jax.set_mesh(mesh), jax.transfer_guard("disallow"):
        state, metrics = compiled(state, data, perm)
        with pytest.raises(Exception, match="[Dd]isallowed"):  # the guard catches a transfer
            compiled(state, data, np.asarray(perm))
    assert metrics["D_loss"].shape == (2,)  # the steps' metrics come back after the call


def test_by_default_the_loop_runs_one_program_per_epoch_and_logs_every_step(
        tiny_images, tmp_path, monkeypatch):
    built = []
    real = loop.build_train_step

    def recording(task, mesh, steps_per_epoch, steps_per_call=1, **kwargs):
        built.append(steps_per_call)
        return real(task, mesh, steps_per_epoch, steps_per_call, **kwargs)

    monkeypatch.setattr(loop, "build_train_step", recording)
    logs = []
    task = GANTask(GANConfig(epochs=1, batch_size=16, log_every=1))  # 64 images: 4 steps
    loop.train(task, tiny_images, str(tmp_path), parallel.make_mesh(jax.devices()[:1]),
               log=logs.append)
    assert built == [4]
    assert any("Each compiled call runs 4 steps" in line for line in logs)
    steps = [line for line in logs if line.startswith("Epoch: [ 1]")]
    assert [line.split("]")[1].strip() for line in steps] == ["[   1/   4", "[   2/   4",
                                                                 "[   3/   4", "[   4/   4"]
