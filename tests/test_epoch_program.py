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
from jaxgen.train import loop, program
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


@pytest.mark.parametrize("shape,kernel,strides,padding,lhs_dilation,rhs_dilation", [
    ((3, 14, 14, 5), (4, 4, 5, 6), (2, 2), ((1, 1), (1, 1)), None, None),  # D's 4x4 stride 2
    ((3, 7, 7, 5), (3, 3, 5, 8), (1, 1), ((1, 1), (1, 1)), None, None),  # G's sub-pixel 3x3
    ((2, 9, 8, 3), (4, 4, 3, 2), (2, 2), ((1, 2), (0, 1)), None, None),  # odd sizes, padding
    ((2, 6, 7, 3), (3, 3, 3, 2), (1, 1), ((2, 1), (1, 2)), (2, 2), None),  # dilated input
    ((2, 9, 9, 3), (3, 2, 3, 2), (2, 1), ((1, 1), (0, 2)), None, (2, 3)),  # dilated kernel
])
def test_canonical_convolution_has_laxs_value_and_gradients_at_two_orders(
        shape, kernel, strides, padding, lhs_dilation, rhs_dilation):
    rng = np.random.default_rng(0)  # numpy: drawing with jax would compile a sampler a shape
    x, w = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in (shape, kernel))
    dn = ("NHWC", "HWIO", "NHWC")

    def plain(x, w):
        return lax.conv_general_dilated(x, w, strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers=dn)

    def ours(x, w):
        return canonical_conv(x, w, strides, padding, lhs_dilation, rhs_dilation,
                              dimension_numbers=dn)

    cotangent = jnp.asarray(rng.normal(size=jax.eval_shape(plain, x, w).shape), jnp.float32)

    def penalty(conv, wrt):  # a gradient penalty's shape: a gradient's squared norm
        inner = jax.grad(lambda x, w: jnp.sum(jnp.tanh(conv(x, w)) * cotangent), wrt)
        return lambda x, w: jnp.sum(inner(x, w) ** 2)

    def value_and_gradients(conv):  # second derivatives through the input's gradient (as
        first = jax.vjp(conv, x, w)[1](cotangent)  # WGAN_GP's) and through the kernel's
        second = jax.grad(penalty(conv, 0), (0, 1))(x, w) + jax.grad(penalty(conv, 1), (0, 1))(x, w)
        return conv(x, w), first, second

    (y, first, second) = jax.jit(lambda: value_and_gradients(ours))()
    expected = jax.jit(lambda: value_and_gradients(plain))()
    close = lambda a, b: np.testing.assert_allclose(  # noqa: E731  float32 sums, in scale
        a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
    close(y, expected[0])
    for a, b in zip(first + second, expected[1] + expected[2]):
        assert a.shape == b.shape
        close(a, b)


def _slow_convolutions(compiled_text: str) -> list[str]:
    convolutions = [line for line in compiled_text.splitlines() if " convolution(" in line]
    assert convolutions
    return [line.split("=")[0].strip() for line in convolutions
            if "dim_labels=b01f_01io->b01f" not in line]


def test_a_gradient_penaltys_second_derivatives_are_fast_in_a_loop():
    """Second derivatives left to autodiff include convolutions whose operands XLA swaps (the
    kernel larger than the input), out of the fast order: in a scan that made WGAN_GP's step
    several times slower. A critic of D's two strided convolutions, penalised as WGAN_GP's."""
    down = lambda x, w: canonical_conv(x, w, (2, 2), ((1, 1), (1, 1)),  # noqa: E731
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def critic(params, x):
        h = jax.nn.leaky_relu(down(x, params[0]), 0.2)
        return jnp.sum(down(h, params[1]), axis=(1, 2, 3))

    def loss(params, x):
        grads = jax.vmap(jax.grad(lambda xi: critic(params, xi[None])[0]))(x)
        return jnp.mean(critic(params, x)) + jnp.mean(
            (jnp.sqrt(jnp.sum(grads ** 2, axis=(1, 2, 3))) - 1) ** 2)

    def steps(params, x):
        body = lambda p, _: (jax.tree.map(lambda a, g: a - 1e-3 * g, p,  # noqa: E731
                                          jax.grad(loss)(p, x)), None)
        return lax.scan(body, params, length=2)[0]

    params = (jnp.ones((4, 4, 1, 8)) * 0.1, jnp.ones((4, 4, 8, 16)) * 0.1)
    x = jnp.ones((4, 28, 28, 1))
    assert not _slow_convolutions(jax.jit(steps).lower(params, x).compile().as_text())


@pytest.fixture(scope="module")
def epoch_program(tiny_images):
    """The GAN's program of 2 steps per call on one device, compiled, with its inputs."""
    task = GANTask(GANConfig(batch_size=16, steps_per_call=2))
    mesh = parallel.make_mesh(jax.devices()[:1])
    with jax.set_mesh(mesh):
        state = jax.jit(lambda: init_state(task, 0), out_shardings=parallel.replicated(mesh))()
        data = parallel.put_replicated(tiny_images, mesh)
        perm = program.build_permutation(mesh, len(tiny_images))(state.rng, jnp.int32(1))
        compiled = program.build_train_step(task, mesh, 4, 2).lower(state, data, perm).compile()
    return mesh, compiled, state, data, perm


def test_every_convolution_of_the_loop_is_in_the_fast_dimension_order(epoch_program):
    """XLA:CPU rewrites convolutions into NHWC/HWIO order for its fast kernels outside loops
    only; inside the scan, every convolution (forward and both gradients) must already be."""
    _, compiled, *_ = epoch_program
    text = compiled.as_text()
    convolutions = [line for line in text.splitlines() if " convolution(" in line]
    assert len(convolutions) >= 10, len(convolutions)  # G's, D's, forward and backward
    assert any("/while/body/" in line for line in convolutions)
    assert not _slow_convolutions(text)


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
    real = program.build_train_step

    def recording(task, mesh, steps_per_epoch, steps_per_call=1, **kwargs):
        built.append(steps_per_call)
        return real(task, mesh, steps_per_epoch, steps_per_call, **kwargs)

    monkeypatch.setattr(program, "build_train_step", recording)
    logs = []
    task = GANTask(GANConfig(epochs=1, batch_size=16, log_every=1))  # 64 images: 4 steps
    loop.train(task, tiny_images, str(tmp_path), parallel.make_mesh(jax.devices()[:1]),
               log=logs.append)
    assert built == [4]
    assert any("Each compiled call runs 4 steps" in line for line in logs)
    steps = [line for line in logs if line.startswith("Epoch: [ 1]")]
    assert [line.split("]")[1].strip() for line in steps] == ["[   1/   4", "[   2/   4",
                                                                 "[   3/   4", "[   4/   4"]
