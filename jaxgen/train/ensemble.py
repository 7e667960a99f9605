"""Seed ensembles: N independent runs of one task, stepped together by one compiled program.

Run r of an ensemble is the run of seed ``config.seed + r``: its own initialisation, noise and
data order, exactly as the solo run with that seed draws them (``jaxgen.keys``). Its train state
is the solo state with a leading run axis on every leaf (``step`` (N,), ``rng`` (N, 2), the
model's arrays (N, ...)); ``program.build_train_step(..., num_runs=N)`` steps every run along
that axis in one program (one after another on CPU, batched elsewhere: ``program.RUNS_FORMS``).
:func:`run_state` takes one run back out, as a solo state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgen.train.state import TrainState, init_state
from jaxgen.train.task import Task


def seeds(task: Task, num_runs: int) -> list[int]:
    """The seeds of an ensemble's runs: ``config.seed``, ``config.seed + 1``, ..."""
    return [task.config.seed + r for r in range(num_runs)]


def init_ensemble(task: Task, num_runs: int) -> TrainState:
    """The stacked train states of ``num_runs`` runs, run r initialised as the solo run of
    seed ``config.seed + r``. Traceable: jit it with the shardings to create it on a mesh."""
    return jax.vmap(lambda seed: init_state(task, seed))(
        jnp.asarray(seeds(task, num_runs), jnp.int32))


def run_state(state: TrainState, run: int) -> TrainState:
    """Run ``run`` of an ensemble's state, as the solo state of its seed."""
    return jax.tree.map(lambda x: x[run], state)
