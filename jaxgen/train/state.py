"""The train state: the global step, the run's root key and the task's model pytree (a seed
ensemble's: every leaf with a leading run axis)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh

from jaxgen import parallel
from jaxgen.keys import named_key
from jaxgen.train.task import Task


class TrainState(struct.PyTreeNode):
    step: jax.Array  # global step, int32
    rng: jax.Array  # root key (raw uint32[2]); all randomness derives from it
    model: Any  # the task's pytree: params, batch statistics, optimiser states


def init_state(task: Task, seed: int) -> TrainState:
    rng = jax.random.PRNGKey(seed)
    return TrainState(step=jnp.zeros((), jnp.int32), rng=rng,
                      model=task.init(named_key(rng, "init")))


def init_states(task: Task, seeds: jax.Array) -> TrainState:
    """The train states of the runs of ``seeds`` (uint32 (N,)), stacked: every leaf gets a
    leading run axis, run r's as ``init_state(task, seeds[r])`` makes it."""
    return jax.vmap(lambda seed: init_state(task, seed))(seeds)


def initial_state(task: Task, seed=None) -> TrainState:
    """A fresh run's train state: of ``config.seed``; for a seed ensemble (``num_seeds`` > 1,
    ``jaxgen.train.ensemble``) its runs' states, of seeds ``seed``, ``seed + 1``, ... stacked.
    Traceable: jit it with the shardings to create it on a mesh. ``seed`` (uint32, default
    ``config.seed``) may be a traced argument, so that one program initialises every seed."""
    config = task.config
    seed = jnp.uint32(config.seed) if seed is None else seed
    if config.num_seeds == 1:
        return init_state(task, seed)
    return init_states(task, seed + jnp.arange(config.num_seeds, dtype=jnp.uint32))


def initial_state_on(task: Task, mesh: Mesh) -> TrainState:
    """:func:`initial_state`, replicated over ``mesh``: computed once, on this process's first
    device of the mesh, and copied to its other devices (each process computes the same
    values). Computing it replicated would compute it on every device; simulated CPU devices
    share the same cores. The seed is the program's argument, not a constant in it: runs of
    the same task that differ in their seed lower to the same program, which the persistent
    compilation cache then compiles once."""
    devices = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    sharding = parallel.replicated(mesh)
    with jax.set_mesh(parallel.make_mesh(devices[:1])):
        once = jax.jit(lambda seed: initial_state(task, seed),
                       out_shardings=jax.sharding.SingleDeviceSharding(devices[0]))(
            np.uint32(task.config.seed))

    def spread(x: jax.Array) -> jax.Array:
        copies = [x if d == devices[0] else jax.device_put(x, d)
                  for d in sharding.addressable_devices]
        return jax.make_array_from_single_device_arrays(x.shape, sharding, copies)

    return jax.tree.map(spread, once)


def abstract_state(task: Task, mesh: Mesh) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of the task's train state (an ensemble's with
    its run axis), without computing it."""
    shapes = jax.eval_shape(lambda: initial_state(task))
    sharding = parallel.replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        shapes)
