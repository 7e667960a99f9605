"""The compiled programs of an epoch: ``steps_per_call`` train steps in one jitted program
(a ``lax.scan``) sharded over the mesh, and the epoch's shuffle.

The dataset stays on the devices as uint8; each step gathers its batch by the epoch's
permutation, so nothing comes back to the host between steps. Keys (``jaxgen.keys``): the
step's noise is folded with the global step, the shuffle's with the epoch, so a resumed run
draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgen import parallel
from jaxgen.keys import named_key
from jaxgen.train.state import TrainState
from jaxgen.train.task import Task

# How an ensemble's program steps its runs: "vmap", all runs as one batched computation (an
# accelerator's cores are mostly idle at batch 64, so N runs cost little more than one), or
# "map", one run after the other inside the program (on CPU the batched convolutions cost
# more than N solo ones; benchmarks/gan_step.py --num-seeds prints both, docs/performance.md).
RUNS_FORMS = ("map", "vmap")


def runs_form_for(platform: str) -> str:
    """The form an ensemble's runs are stepped in on ``platform``: map on CPU, else vmap."""
    return "map" if platform == "cpu" else "vmap"


def build_train_step(task: Task, mesh: Mesh, steps_per_epoch: int, steps_per_call: int = 1,
                     compiler_options: Optional[dict] = None, num_runs: int = 1,
                     runs_form: Optional[str] = None):
    """``run(state, data, perm) -> (state, metrics)``: ``steps_per_call`` train steps in one
    jitted program, sharded over ``mesh``; each metric comes back with one value per step.
    ``data`` is the uint8 image array, or (images, labels) for a task with ``needs_labels``.
    ``compiler_options`` default to ``parallel.compiler_options(mesh)``; ``{}`` compiles with
    XLA's defaults.

    ``num_runs`` > 1: a seed ensemble (:mod:`jaxgen.train.ensemble`). ``state`` and ``perm``
    have a leading run axis, each run steps on its own batches, keys and model, and each metric
    comes back as (num_runs, steps_per_call). ``runs_form`` says how the program steps the
    runs (:data:`RUNS_FORMS`); by default :func:`runs_form_for` the mesh's platform. In the
    ``vmap`` form, where ``parallel.runs_mesh`` finds a 2-D mesh (the device count divides the
    runs, or they divide it), the program shards the runs over rows of devices, each run's
    batch over its row; state and metrics come in and go out replicated, as for one run."""
    if runs_form not in (None, *RUNS_FORMS):
        raise ValueError(f"runs_form must be one of {', '.join(RUNS_FORMS)}, got {runs_form!r}")
    form = runs_form or runs_form_for(mesh.devices.flat[0].platform)
    sharded_runs = parallel.runs_mesh(mesh, num_runs) if form == "vmap" else None
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
        if form == "map":
            return lax.map(lambda run: run_steps(run[0], data, run[1]), (state, perm))
        if sharded_runs is None:
            return jax.vmap(run_steps, in_axes=(0, None, 0))(state, data, perm)
        # Each row of devices takes its runs (a slice of the replicated state: no traffic);
        # within the runs, the batch constraints (parallel.shard_batch) split over the row.
        with jax.sharding.use_abstract_mesh(sharded_runs.abstract_mesh):
            by_run = NamedSharding(sharded_runs, P(parallel.RUNS_AXIS))
            state, perm = lax.with_sharding_constraint((state, perm), by_run)
            return jax.vmap(run_steps, in_axes=(0, None, 0),
                            spmd_axis_name=parallel.RUNS_AXIS)(state, data, perm)

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


@functools.lru_cache(maxsize=32)
def build_permutation(mesh: Mesh, num_images: int, num_runs: int = 1):
    """``permutation(rng, epoch)``: the epoch's shuffle of the dataset, from the run's key (of
    each run's key, (num_runs, num_images), for an ensemble's keys (num_runs, 2)). It depends
    on nothing else, so a process builds (traces and compiles) it once per mesh and size:
    the runs of a collection or a sweep on the same data share it."""

    def shuffle(rng: jax.Array, epoch: jax.Array) -> jax.Array:
        return jax.random.permutation(named_key(rng, "shuffle", epoch), num_images)

    def permutation(rng: jax.Array, epoch: jax.Array) -> jax.Array:
        return shuffle(rng, epoch) if num_runs == 1 else jax.vmap(shuffle, (0, None))(rng, epoch)

    return jax.jit(permutation, out_shardings=parallel.replicated(mesh))
