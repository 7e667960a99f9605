"""Restoring a finished or running experiment from its workdir, and drawing its samples.

A seed ensemble's workdir (``--num-seeds``) restores as the ensemble (every run's state) or,
with ``run=R``, as the solo run of its seed ``seed + R`` (``jaxgen.train.ensemble``)."""

from __future__ import annotations

import functools
import os
from typing import Callable, NamedTuple, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxgen import parallel
from jaxgen.checkpoint import Checkpoints
from jaxgen.errors import JaxgenError
from jaxgen.runs.registry import task_class
from jaxgen.train import ensemble
from jaxgen.train.state import TrainState, abstract_state
from jaxgen.train.task import Task
from jaxgen.workdir import checkpoint_dir


class Restored(NamedTuple):
    task: Task  # with the run's own config
    state: TrainState  # replicated over the devices asked for
    epoch: int  # the epoch of the checkpoint actually restored (an unreadable newer one skipped)


def restore_run(workdir: str, devices: Optional[list] = None,
                run: Optional[int] = None) -> tuple[Task, TrainState]:
    """The task (with the run's own config) and the newest readable train state of ``workdir``,
    replicated over ``devices`` (default: all), whatever device count trained it. ``run``: of
    a seed ensemble, run R alone, as the solo run of seed ``seed + R`` (0 for a solo run)."""
    return restore_newest(workdir, devices, run)[:2]


def restore_newest(workdir: str, devices: Optional[list] = None,
                   run: Optional[int] = None) -> Restored:
    """``restore_run``, with the epoch of the checkpoint it restored."""
    directory = checkpoint_dir(os.path.abspath(workdir))
    if not os.path.isdir(directory):
        raise JaxgenError(f"--workdir {workdir} holds no checkpoints ({directory} is missing); "
                          "pass the --workdir of a training run.")
    ckpts = Checkpoints(directory, read_only=True)
    epochs = ckpts.epochs()
    if not epochs:
        raise JaxgenError(f"--workdir {workdir} holds no finished checkpoint yet; train at least "
                          "one epoch first.")
    mesh = parallel.make_mesh(devices)
    task_box = {}

    def target(meta: dict):
        task_cls = task_class(meta.get("task"), workdir)
        try:
            config = task_cls.config_class.from_dict(meta["config"])
        except JaxgenError as e:
            raise JaxgenError(f"--workdir {workdir} was written by another version of jaxgen "
                              f"({e}); restore it with that version.") from None
        # The config, and so the shapes to restore, come from the checkpoint itself.
        task_box["task"] = task_cls(config)
        return abstract_state(task_box["task"], mesh)

    with jax.set_mesh(mesh):
        epoch, state, _ = ckpts.restore_latest(target, quarantine=False)
    ckpts.close()
    restored = Restored(task_box["task"], state, epoch)
    return restored if run is None else select_run(restored, run, workdir)


def select_run(restored: Restored, run: int, workdir: str) -> Restored:
    """Run ``run`` of a restored seed ensemble, as the solo run of its seed; a solo run is its
    own run 0."""
    runs = ensemble.num_runs(restored.task)
    if isinstance(run, bool) or not isinstance(run, int) or not 0 <= run < runs:
        raise JaxgenError(f"--run {run} is not a run of --workdir {workdir}, which holds "
                          + (f"{runs} runs: pass --run 0..{runs - 1}." if runs > 1 else
                             "one run: drop --run, or pass --run 0."))
    if runs == 1:
        return restored
    return Restored(ensemble.run_task(restored.task, run),
                    ensemble.run_state(restored.state, run), restored.epoch)


def require_one_run(task: Task, workdir: str) -> None:
    """A seed ensemble restored whole where one run is wanted: which to pass."""
    runs = ensemble.num_runs(task)
    if runs > 1:
        raise JaxgenError(f"--workdir {workdir} holds a seed ensemble of {runs} runs (seeds "
                          f"{task.config.seed}..{task.config.seed + runs - 1}); pass --run R "
                          f"(0..{runs - 1}) to draw from run R.")


def restored_line(workdir: str, epoch: int, run: Optional[int] = None) -> str:
    which = "" if run is None else f"run {run} of "
    return f"restored {which}the checkpoint of epoch {epoch} from {workdir}"


def newest_meta(workdir: str, flag: str, fix: str) -> tuple[int, dict]:
    """(epoch, meta) of the newest readable checkpoint in ``workdir``, reading no arrays; a
    JaxgenError naming ``flag`` and ``fix`` when there is none."""
    directory = checkpoint_dir(os.path.abspath(workdir))
    if not os.path.isdir(directory):
        raise JaxgenError(f"{flag} {workdir} holds no checkpoints ({directory} is missing); "
                          f"{fix}.")
    ckpts = Checkpoints(directory, read_only=True)
    try:
        epochs = ckpts.epochs()
        if not epochs:
            raise JaxgenError(f"{flag} {workdir} holds no finished checkpoint yet; {fix}.")
        for epoch in reversed(epochs):  # as restoring does, skip an unreadable newest one
            try:
                return epoch, ckpts.read_meta(epoch)
            except Exception:  # any failure to read: try the previous one
                continue
        raise JaxgenError(f"none of the checkpoints of {flag} {workdir} can be read; {fix}.")
    finally:
        ckpts.close()


def sample_images(workdir: str, num: int, seed: int = 0, devices: Optional[list] = None,
                  batch_size: int = 1000, label: Optional[int] = None,
                  log: Optional[Callable[[str], None]] = None,
                  run: Optional[int] = None) -> np.ndarray:
    """``num`` images in [-1, 1], shape (num, 28, 28, 1), from the generative model of the newest
    readable checkpoint in ``workdir`` (GAN: its generator; VAE: prior samples through the
    decoder), drawn with key ``PRNGKey(seed)``. The same (seed, num) gives the same images. A
    conditional GAN draws category ``label`` (uniform categories when None). ``log`` hears
    which epoch's checkpoint was restored (an unreadable newer one skipped). A seed ensemble's
    workdir needs ``run``, the run to draw from."""
    if num < 1:
        raise JaxgenError(f"--num must be a positive integer, got {num}.")
    task, state, epoch = restore_newest(workdir, devices=devices, run=run)
    require_one_run(task, workdir)
    if log is not None:
        log(restored_line(workdir, epoch, run))
    if not task.is_generative():
        raise JaxgenError(f"--workdir {workdir} holds a {task.name} run, which is not a "
                          "generative model; pass the --workdir of a GAN or VAE run.")
    labels = None
    if label is not None:
        check_label(task, label, workdir)
        labels = np.full(num, label, np.int32)
    return draw_samples(task, state.model, num, jax.random.PRNGKey(seed), batch_size, labels)


def check_label(task: Task, label: int, workdir: str) -> None:
    """``--label`` checked against the run: a conditional model's category, in range."""
    if not task.conditional_classes:
        raise JaxgenError(f"--label needs a conditional GAN (CGAN, ACGAN, infoGAN); --workdir "
                          f"{workdir} holds a {task.name} run, which draws no label: drop "
                          "--label.")
    if not 0 <= label < task.conditional_classes:
        raise JaxgenError(f"--label must be in 0..{task.conditional_classes - 1}, got {label}.")


def draw_samples(task: Task, model, num: int, key: jax.Array, batch_size: int = 1000,
                 labels: Optional[np.ndarray] = None) -> np.ndarray:
    """``num`` samples of a generative ``task`` with parameters ``model`` (on a mesh, as training
    and ``restore_run`` leave them, or on the host) as a host array in [-1, 1], drawn
    ``batch_size`` at a time; chunk i uses ``fold_in(key, i)``. A conditional model draws
    category ``labels[i]`` (num,) for sample i (uniform ones when None). Every sampler in jaxgen
    (``sample_images``, evaluate.py, evaluation during training, the ablation) draws through
    here, so the same model, key and num give the same images everywhere."""
    if not task.is_generative():
        raise JaxgenError(f"a {task.name} model is not a generative model: it draws no samples.")
    if num < 1:
        raise JaxgenError(f"the number of samples must be a positive integer, got {num}.")
    mesh = _mesh_of(model)
    draw = _sampler(task, mesh)
    chunks = []
    with jax.set_mesh(mesh):  # each device draws its share of a chunk
        model = task.sampling_model(model)
        for i, start in enumerate(range(0, num, batch_size)):
            n = min(batch_size, num - start)
            extra = () if labels is None else (np.asarray(labels[start:start + n], np.int32),)
            chunks.append(parallel.to_host(draw(model, jax.random.fold_in(key, i), n, *extra)))
    return np.concatenate(chunks)


def _mesh_of(model) -> Mesh:
    sharding = getattr(jax.tree.leaves(model)[0], "sharding", None)
    if isinstance(sharding, NamedSharding):
        return sharding.mesh
    return parallel.make_mesh(jax.devices()[:1])


@functools.lru_cache(maxsize=8)
def _sampler(task: Task, mesh: Mesh):
    """The jitted ``task.sample_images`` on ``mesh``, compiled once per (task, mesh, num)."""
    return jax.jit(task.sample_images, static_argnums=2, out_shardings=parallel.replicated(mesh),
                   compiler_options=parallel.compiler_options(mesh))
