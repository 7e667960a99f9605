"""The training loop's checks of a run's health: every metric and parameter finite (each run
of a seed ensemble's named), and an ensemble that fits its devices. A failed check is one
:class:`~jaxgen.errors.JaxgenError` naming the problem and what to do."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxgen import parallel
from jaxgen.checkpoint import Checkpoints
from jaxgen.errors import JaxgenError
from jaxgen.train import ensemble
from jaxgen.train.state import TrainState, initial_state
from jaxgen.train.task import Task


def _which_run(task: Task, run: Optional[int]) -> str:
    if run is None or ensemble.num_runs(task) == 1:
        return ""
    return f" in run {run} (seed {task.config.seed + run})"


def check_finite(metrics: dict, epoch: int, step: int, ckpts: Checkpoints, task: Task) -> None:
    """Every metric finite (an ensemble's: every run's, the first bad run named)."""
    for name, value in metrics.items():
        value = np.asarray(value, dtype=float)
        bad = ~np.isfinite(value)
        if bad.any():
            where = np.argwhere(bad)[0]
            run = int(where[0]) if ensemble.num_runs(task) > 1 else None
            raise JaxgenError(f"{name} became {value[tuple(where)]} at epoch {epoch}, step "
                              f"{step}{_which_run(task, run)}; " + _stopped(ckpts))


def finite_runs(tree, num_runs: int) -> np.ndarray:
    """Per run, whether every float of ``tree`` is finite (a solo run: (1,)). On the host, from
    this process's copy: one copy of the model an epoch, where a compiled check would be
    compiled anew for each model."""
    finite = np.ones(num_runs, bool)
    for x in jax.tree.leaves(parallel.to_host(tree)):
        if jnp.issubdtype(x.dtype, jnp.floating):  # jnp's: bfloat16 is floating too
            runs = x.reshape(num_runs, -1) if num_runs > 1 else x.reshape(1, -1)
            finite &= np.isfinite(runs).all(axis=1)
    return finite


def check_finite_state(state: TrainState, epoch: int, ckpts: Checkpoints, task: Task) -> None:
    finite = finite_runs(state.model, ensemble.num_runs(task))
    if not finite.all():
        run = int(np.argmin(finite))
        raise JaxgenError(f"the model's parameters became non-finite in epoch {epoch}"
                          f"{_which_run(task, run)}; " + _stopped(ckpts))


def check_memory(task: Task, mesh: Mesh) -> None:
    """An ensemble whose train step cannot fit a device is refused before anything starts."""
    runs = ensemble.num_runs(task)
    limit = parallel.device_memory_limit(mesh) if runs > 1 else None
    if limit is None:
        return
    state = jax.eval_shape(lambda: initial_state(task))
    size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    needed = STEP_MEMORY * size
    if needed > limit:
        fits = max(1, int(runs * limit / needed))
        raise JaxgenError(
            f"--num-seeds {runs} needs about {needed / 2 ** 30:.1f} GiB a device "
            f"({STEP_MEMORY} x its {size / 2 ** 30:.2f} GiB train state), more than the "
            f"{limit / 2 ** 30:.1f} GiB each of its {mesh.size} devices holds; pass "
            f"--num-seeds {fits} or fewer, or fewer devices.")


# A train step holds its state, the gradients and the updated state at once: the estimate of
# an ensemble's memory is this many copies of its state.
STEP_MEMORY = 3


def _stopped(ckpts: Checkpoints) -> str:
    last_saved = _last_saved(ckpts)
    kept = (f"the last good checkpoint, epoch {last_saved}, is kept in {ckpts.directory}"
            if last_saved else "no checkpoint was written")
    return (f"training stopped and {kept}. Lower the learning rates or change --seed, and use a "
            "new --workdir to start over.")


def _last_saved(ckpts: Checkpoints) -> Optional[int]:
    ckpts.wait()
    return (ckpts.epochs() or [None])[-1]
