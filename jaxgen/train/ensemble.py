"""Seed ensembles: N independent runs of one task, stepped together by one compiled program.

``TrainConfig.num_seeds`` N > 1 (``--num-seeds N``) makes a run an ensemble. Run r is the run
of seed ``config.seed + r``: its own initialisation, noise and data order, exactly as the solo
run with that seed draws them (``jaxgen.keys``). Its train state is the solo state with a
leading run axis on every leaf (``step`` (N,), ``rng`` (N, 2), the model's arrays (N, ...));
``program.build_train_step(..., num_runs=N)`` steps every run along that axis in one program
(one after another on CPU, batched elsewhere: ``program.RUNS_FORMS``). The training loop
treats an ensemble as one run (one workdir, one checkpoint per epoch) and shows every run
(docs/library.md); :func:`run_state` and :func:`run_task` take run r back out as the solo run
of its seed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.train.state import TrainState
from jaxgen.train.task import Picture, Task


def num_runs(task: Task) -> int:
    """How many runs the task's config trains: ``num_seeds``."""
    return task.config.num_seeds


def seeds(task: Task, runs: int = 0) -> list[int]:
    """The seeds of an ensemble's runs (``runs``, default ``num_seeds`` of them):
    ``config.seed``, ``config.seed + 1``, ..."""
    return [task.config.seed + r for r in range(runs or num_runs(task))]


def run_state(state: TrainState, run: int) -> TrainState:
    """Run ``run`` of an ensemble's state, as the solo state of its seed (of any pytree with a
    leading run axis, such as the state's model, its part)."""
    return jax.tree.map(lambda x: x[run], state)


def run_task(task: Task, run: int) -> Task:
    """The solo task of an ensemble's run ``run``: its config with seed ``seed + run``."""
    if not 0 <= run < num_runs(task):
        raise ValueError(f"run {run} of an ensemble of {num_runs(task)}")
    return type(task)(dataclasses.replace(task.config, seed=task.config.seed + run,
                                          num_seeds=1))


def stack_runs(trees: list) -> Any:
    """Runs' pytrees stacked along a new leading run axis (the inverse of taking run r)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def update_after_epoch(task: Task, model: Any, metrics: dict) -> tuple[Any, list[str]]:
    """``task.update_after_epoch`` of every run of an ensemble's ``model`` with its own
    ``metrics`` (name -> (runs, steps)); each run's lines prefixed with its number."""
    if type(task).update_after_epoch is Task.update_after_epoch:
        return model, []  # nothing changes: keep the stacked arrays as they are
    updated, lines = {}, []  # the runs whose model changed
    for r in range(num_runs(task)):
        before = run_state(model, r)
        after, run_lines = task.update_after_epoch(before, {k: np.asarray(v)[r]
                                                            for k, v in metrics.items()})
        if after is not before:
            updated[r] = after
        lines += [f"run {r}: {line}" for line in run_lines]
    if not updated:
        return model, lines
    return stack_runs([updated[r] if r in updated else run_state(model, r)
                       for r in range(num_runs(task))]), lines


def pictures(task: Task, state: TrainState, final: bool = False) -> dict[str, Picture]:
    """An ensemble's pictures, one grid per kind with every run's, run 0 on top: after each
    epoch the leading ``Picture.ensemble_rows`` rows of each run's (its first row of samples,
    say), after the last (``final``) each run's whole grid."""
    draw = task.final_pictures if final else task.pictures
    per_run = [draw(run_state(state.model, r), state.rng[r]) for r in range(num_runs(task))]
    combined = {}
    for what, first in per_run[0].items():
        shown = None if final else first.ensemble_rows * first.ncols
        combined[what] = dataclasses.replace(
            first, images=jnp.concatenate([run[what].images[:shown] for run in per_run]))
    return combined
