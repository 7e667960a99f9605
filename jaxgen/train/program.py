"""The compiled programs of an epoch: ``steps_per_call`` train steps in one jitted program
(a ``lax.scan``) sharded over the mesh, and the epoch's shuffle.

The dataset stays on the devices as uint8; each step gathers its batch by the epoch's
permutation, so nothing comes back to the host between steps. Keys (``jaxgen.keys``): the
step's noise is folded with the global step, the shuffle's with the epoch, so a resumed run
draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh

from jaxgen import parallel
from jaxgen.keys import named_key
from jaxgen.train.state import TrainState
from jaxgen.train.task import Task


def build_train_step(task: Task, mesh: Mesh, steps_per_epoch: int, steps_per_call: int = 1,
                     compiler_options: Optional[dict] = None, num_runs: int = 1):
    """``run(state, data, perm) -> (state, metrics)``: ``steps_per_call`` train steps in one
    jitted program, sharded over ``mesh``; each metric comes back with one value per step.
    ``data`` is the uint8 image array, or (images, labels) for a task with ``needs_labels``.
    ``compiler_options`` default to ``parallel.compiler_options(mesh)``; ``{}`` compiles with
    XLA's defaults.

    ``num_runs`` > 1: a seed ensemble (:mod:`jaxgen.train.ensemble`). ``state`` and ``perm``
    have a leading run axis, each run steps on its own batches, keys and model, and each metric
    comes back as (num_runs, steps_per_call)."""
    batch_size = task.config.batch_size
    repl = parallel.replicated(mesh)

    def step(state: TrainState, data, perm: jax.Array):
        i = state.step % steps_per_epoch
        idx = lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)

        def gather(x):
            return parallel.shard_batch(jnp.take(x, idx, axis=0))

        key = named_key(state.rng, "noise", state.step)
        kwargs = {"step_in_epoch": i} if task.needs_step_in_epoch else {}
        if task.needs_labels:
            images, labels = data
            kwargs["labels"] = gather(labels)
        else:
            images = data
        images = gather(images).astype(jnp.float32) / 127.5 - 1.0  # [0, 255] -> [-1, 1]
        model, metrics = task.train_step(state.model, images, key, **kwargs)
        return state.replace(step=state.step + 1, model=model), metrics

    def run_steps(state: TrainState, data, perm: jax.Array):
        if steps_per_call == 1:
            state, metrics = step(state, data, perm)
            return state, jax.tree.map(lambda m: m[None], metrics)
        return lax.scan(lambda s, _: step(s, data, perm), state, length=steps_per_call)

    def steps(state: TrainState, data, perm: jax.Array):
        if num_runs == 1:
            return run_steps(state, data, perm)
        return jax.vmap(run_steps, in_axes=(0, None, 0))(state, data, perm)

    precision = task.config.precision

    def run(state: TrainState, data, perm: jax.Array):
        if precision == "default":
            return steps(state, data, perm)
        with jax.default_matmul_precision(precision):  # read when the step is traced
            return steps(state, data, perm)

    if compiler_options is None:
        compiler_options = parallel.compiler_options(mesh)
    return jax.jit(run, in_shardings=(repl, repl, repl), out_shardings=(repl, repl),
                   donate_argnums=0, compiler_options=compiler_options or None)


def build_permutation(mesh: Mesh, num_images: int, num_runs: int = 1):
    """``permutation(rng, epoch)``: the epoch's shuffle of the dataset, from the run's key (of
    each run's key, (num_runs, num_images), for an ensemble's keys (num_runs, 2))."""

    def shuffle(rng: jax.Array, epoch: jax.Array) -> jax.Array:
        return jax.random.permutation(named_key(rng, "shuffle", epoch), num_images)

    def permutation(rng: jax.Array, epoch: jax.Array) -> jax.Array:
        return shuffle(rng, epoch) if num_runs == 1 else jax.vmap(shuffle, (0, None))(rng, epoch)

    return jax.jit(permutation, out_shardings=parallel.replicated(mesh))
