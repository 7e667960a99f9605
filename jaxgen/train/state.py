"""The train state: the global step, the run's root key and the task's model pytree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
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


def abstract_state(task: Task, mesh: Mesh) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of the task's train state, without computing it."""
    shapes = jax.eval_shape(lambda: init_state(task, task.config.seed))
    sharding = parallel.replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        shapes)
