"""The shared training loop: the sharded step, the epochs, logging, NaN checks, resume.

A model plugs in as a :class:`~jaxgen.train.task.Task`. Everything else is here, once: the
dataset resident on the devices as uint8, a per-epoch shuffle from a ``jax.random`` key, the step
jitted once with data-parallel shardings over the mesh, logging in the reference's format, the
history, NaN checks, orbax checkpoints every epoch and exact resume.

Keys (``jaxgen.keys``): the shuffle's is folded with the epoch, the step's noise with the global
step, so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from jaxgen import parallel
from jaxgen.checkpoint import Checkpoints
from jaxgen.data import IMAGE_SHAPE, Dataset
from jaxgen.errors import JaxgenError
from jaxgen.tensorboard import DIRECTORY as TENSORBOARD
from jaxgen.train import checks, ensemble, program
from jaxgen.train.history import History
from jaxgen.train.outputs import RunOutputs
from jaxgen.train.state import TrainState, abstract_state, initial_state_on
from jaxgen.train.task import Task, resolve_steps_per_call
from jaxgen.workdir import WorkdirLock, checkpoint_dir, ensure_writable


def _restore_target(task: Task, workdir: str, mesh: Mesh, num_images: int):
    """Checks a checkpoint's meta against this run; gives the abstract state to restore onto."""
    abstract = abstract_state(task, mesh)

    def target(meta: dict) -> TrainState:
        if meta.get("task") != task.name:
            raise JaxgenError(f"--workdir {workdir} holds a {meta.get('task')} run, not a "
                              f"{task.name} run; pass another --workdir.")
        conflicts = task.config.conflicts(meta["config"])
        if meta.get("num_images", num_images) != num_images:
            conflicts.append(f"{meta['num_images']} training images (this command: "
                             f"{num_images})")
        if conflicts:
            raise JaxgenError(
                f"--workdir {workdir} holds a run with {'; '.join(conflicts)}; rerun with the "
                "checkpoint's values to resume it, or pass a new --workdir for a new run.")
        return abstract

    return target


def _format_metrics(metrics: dict) -> str:
    """``name: value, ...``; an ensemble's values (one per run) as ``mean [min, max]``."""
    def show(v):
        v = np.asarray(v, dtype=float)
        if v.ndim == 0:
            return f"{float(v):.8f}"
        return f"{v.mean():.8f} [{v.min():.8f}, {v.max():.8f}]"

    return ", ".join(f"{k}: {show(v)}" for k, v in metrics.items())


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    return tqdm(total=total, leave=False, dynamic_ncols=True, file=sys.stderr)


# hook(task, state, epoch, workdir) -> scalars to show in TensorBoard after the epoch, or None
EpochHook = Callable[[Task, TrainState, int, str], Optional[dict]]


def train(task: Task, images: Union[Dataset, np.ndarray], workdir: str, mesh: Mesh,
          log: Callable[[str], None] = print, labels: Optional[np.ndarray] = None,
          epoch_hooks: Sequence[EpochHook] = (),
          profile_steps: Optional[tuple[int, int]] = None) -> tuple[TrainState, History]:
    """Trains ``task`` on ``images`` until ``task.config.epochs``; resumes from the newest
    checkpoint in ``workdir`` if there is one. Returns the final state and history.

    ``images``: a split of ``data.load_dataset`` (its name must be ``task.config.dataset``'s;
    its labels are used by tasks with ``needs_labels``), or uint8 images (N, H, W, C) with
    ``labels`` (N,) where the task needs them. Each of ``epoch_hooks`` is called
    as ``hook(task, state, epoch, workdir)`` on every process after the epoch's pictures, before
    its checkpoint (e.g. an evaluation every few epochs, ``jaxgen.runs.evaluate``); the scalars
    it returns, if any, are kept in the history and shown in TensorBoard. ``profile_steps`` (first,
    last), global 1-based steps, writes a ``jax.profiler`` trace of those steps (of the calls
    holding them, with ``steps_per_call`` > 1) into ``WORKDIR/tensorboard/plugins/profile/``."""
    config = task.config
    if hasattr(task, "epoch_end") or hasattr(task, "train_end"):
        raise JaxgenError(f"{type(task).__name__} defines epoch_end/train_end, which the loop no "
                          "longer calls: return its pictures from pictures(model, rng) and "
                          "final_pictures(model, rng) instead (docs/library.md).")
    if isinstance(images, Dataset):
        if images.name != config.dataset:
            raise JaxgenError(f"the images are {images.name}'s {images.split} split, but the "
                              f"task's config says dataset={config.dataset!r}: load "
                              f"{config.dataset} or set dataset={images.name!r} in the config.")
        labels = images.labels if labels is None else labels
        images = images.images
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
        raise JaxgenError(f"{task.name} trains on {config.dataset}'s images, uint8 of shape "
                          f"(N, {', '.join(map(str, IMAGE_SHAPE))}); got {images.dtype} of shape "
                          f"{images.shape}. Pass data.load_dataset(...).images.")
    if task.needs_labels and (labels is None or len(labels) != len(images)):
        raise JaxgenError(f"{task.name} trains on labelled images: pass one label per image.")
    config.validate()
    parallel.check_batch_size(config.batch_size, mesh)
    checks.check_memory(task, mesh)
    main = parallel.is_main_process()
    log = log if main else (lambda _: None)
    steps_per_epoch = len(images) // config.batch_size  # the last partial batch is dropped
    if steps_per_epoch == 0:
        raise JaxgenError(f"--batch-size {config.batch_size} is larger than the {len(images)} "
                          "training images; pass a smaller batch size.")
    total = steps_per_epoch * config.epochs
    if profile_steps is not None and not 1 <= profile_steps[0] <= profile_steps[1] <= total:
        raise JaxgenError(f"--profile-steps {profile_steps[0]}..{profile_steps[1]} is outside "
                          f"the run's steps 1..{total} ({config.epochs} epochs of "
                          f"{steps_per_epoch}); pass FIRST..LAST within them.")
    workdir = ensure_writable(workdir)
    with WorkdirLock(workdir, enabled=main):
        return _train(task, images, workdir, mesh, log, labels, epoch_hooks, steps_per_epoch,
                      profile_steps)


class _Profile:
    """A ``jax.profiler`` trace from the call that runs step ``first`` to the one that runs
    ``last`` (global, 1-based), into ``directory``."""

    def __init__(self, steps: Optional[tuple[int, int]], directory: str, log):
        self.steps, self.directory, self.log, self.running = steps, directory, log, False
        self.first = None  # the first step of the traced calls, once tracing

    def before(self, first_step: int, n: int) -> None:
        """Before a call of ``n`` steps from global step ``first_step``."""
        if self.steps and not self.running and first_step <= self.steps[0] < first_step + n:
            jax.profiler.start_trace(self.directory)
            self.running, self.first = True, first_step

    def after(self, last_step: int, state) -> None:
        if self.running and last_step >= self.steps[1]:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.running = False
            traced = f"steps {self.first}..{last_step}"
            if (self.first, last_step) != self.steps:
                traced += (f", the calls holding steps {self.steps[0]}..{self.steps[1]} "
                           "(--steps-per-call 1 traces those alone)")
            self.log(f"wrote a profile of {traced} into {self.directory} "
                     "(TensorBoard's profile tab, or Perfetto)")


def _train(task: Task, images: np.ndarray, workdir: str, mesh: Mesh, log, labels, epoch_hooks,
           steps_per_epoch: int, profile_steps) -> tuple[TrainState, History]:
    """``train`` in a checked, writable and locked workdir."""
    config = task.config
    runs = ensemble.num_runs(task)
    ckpts = Checkpoints(checkpoint_dir(workdir), max_to_keep=config.keep_checkpoints)
    outputs = RunOutputs(task, workdir, steps_per_epoch, parallel.is_main_process())

    with jax.set_mesh(mesh):
        restored = ckpts.restore_latest(_restore_target(task, workdir, mesh, len(images)),
                                        log=log)
        if restored is None:
            start_epoch = 0
            state = initial_state_on(task, mesh)
            history = History.empty(task.metric_names, runs)
        else:
            start_epoch, state, meta = restored
            if start_epoch > config.epochs:  # the run's files would lose its later epochs
                ckpts.close()
                raise JaxgenError(
                    f"--workdir {workdir} holds a run of {start_epoch} epochs, more than "
                    f"--epochs {config.epochs}, and a run is never shortened; pass --epochs "
                    f"{start_epoch} (or more, to train on) or a new --workdir. Nothing was "
                    "changed.")
            trained = start_epoch * steps_per_epoch
            if profile_steps is not None and profile_steps[0] <= trained:
                ckpts.close()
                raise JaxgenError(
                    f"--profile-steps {profile_steps[0]}..{profile_steps[1]} starts within the "
                    f"steps this run has trained (1..{trained}, {start_epoch} epochs), which "
                    f"will not run again; pass steps after {trained}. Nothing was changed.")
            history = History.from_dict(meta["history"], task.metric_names)
            log(f"Resuming from the checkpoint of epoch {start_epoch} in {ckpts.directory}.")
        outputs.start(history)  # config.json; TensorBoard's files anew from the history
        if start_epoch >= config.epochs:
            log(f"{workdir} already holds {start_epoch} epochs (--epochs {config.epochs}); "
                "nothing to train. Its end-of-run outputs are written anew from the history.")
            # a run killed after its last checkpoint may lack them
            outputs.run_end(history, _host(_pictures(task, state, final=True)))
            outputs.close()
            ckpts.close()
            return state, history

        data = parallel.put_replicated(images, mesh)
        if task.needs_labels:
            data = (data, parallel.put_replicated(np.asarray(labels, np.int32), mesh))
        compiled = {}  # steps per call -> jitted program

        def run_steps(n: int):
            if n not in compiled:
                compiled[n] = program.build_train_step(task, mesh, steps_per_epoch, n,
                                                       num_runs=runs)
            return compiled[n]

        permutation_fn = program.build_permutation(mesh, len(images), runs)
        session_start = time.time()
        total_before = history.total_time
        bar_enabled = outputs.main and sys.stderr.isatty()
        profile = _Profile(profile_steps, os.path.join(workdir, TENSORBOARD), log)
        per_call = min(resolve_steps_per_call(config, steps_per_epoch), steps_per_epoch)
        if per_call > config.log_every:
            log(f"Each compiled call runs {per_call} steps; their log lines come when it ends "
                "(--steps-per-call 1 prints them as the steps run).")
        if runs > 1:
            seeds = ensemble.seeds(task)
            log(f"Training {runs} runs of seeds {seeds[0]}..{seeds[-1]} in one program; each "
                "line gives the runs' mean [min, max], metrics.jsonl every run's.")
        for epoch in range(start_epoch + 1, config.epochs + 1):
            epoch_start = time.time()
            perm = permutation_fn(state.rng, jnp.int32(epoch))
            bar = _progress(steps_per_epoch, bar_enabled)
            write = bar.write if bar else log
            chunks, done = [], 0
            while done < steps_per_epoch:
                n = min(per_call, steps_per_epoch - done)
                first = (epoch - 1) * steps_per_epoch + done + 1  # global, 1-based
                profile.before(first, n)
                state, metrics = run_steps(n)(state, data, perm)  # metrics: (n,) per name
                profile.after(first + n - 1, state)
                chunks.append(metrics)
                if bar:
                    bar.update(n)
                for i in range(done + 1, done + n + 1):
                    if i % config.log_every == 0:
                        host = parallel.to_host(metrics)  # (n,), an ensemble's (runs, n)
                        last = {k: host[k][..., i - done - 1] for k in task.metric_names}
                        checks.check_finite(last, epoch, i, ckpts, task)
                        write(f"Epoch: [{epoch:2d}] [{i:4d}/{steps_per_epoch:4d}] "
                              + _format_metrics(last))
                        outputs.step(epoch, i, last)
                done += n
            if bar:
                bar.close()
            epoch_metrics = {k: np.concatenate([c[k] for c in parallel.to_host(chunks)], axis=-1)
                             for k in task.metric_names}
            checks.check_finite(epoch_metrics, epoch, steps_per_epoch, ckpts, task)
            history.add_epoch(epoch_metrics, time.time() - epoch_start)
            history.total_time = total_before + (time.time() - session_start)
            if runs == 1:
                model, lines = task.update_after_epoch(state.model, epoch_metrics)
            else:
                model, lines = ensemble.update_after_epoch(task, state.model, epoch_metrics)
            state = state.replace(model=model)
            for line in lines:
                log(line)
            shown = outputs.epoch_pictures(epoch, _host(_pictures(task, state)))
            scalars = {}
            for hook in epoch_hooks:
                scalars.update(hook(task, state, epoch, workdir) or {})
            history.epoch_scalars.append(scalars)
            checks.check_finite_state(state, epoch, ckpts, task)
            # The next step donates (reuses) the state's buffers: the save reads them first.
            ckpts.save_and_wait(epoch, state, {"task": task.name, "epoch": epoch,
                                        "num_images": len(images), "config": config.to_dict(),
                                        "history": history.to_dict()})
            outputs.epoch_end(epoch, history, shown)

        history.total_time = total_before + (time.time() - session_start)
        log(f"Avg one epoch time: {np.mean(history.per_epoch_time):.2f}, total {config.epochs} "
            f"epochs time: {history.total_time:.2f}")
        log("Training finish!... save training results")
        outputs.run_end(history, _host(_pictures(task, state, final=True)))
        outputs.close()
        ckpts.wait()
        ckpts.close()
    return state, history


def _pictures(task: Task, state: TrainState, final: bool = False) -> dict:
    """The task's pictures after an epoch (``final``: after the last), an ensemble's with every
    run's."""
    if ensemble.num_runs(task) > 1:
        return ensemble.pictures(task, state, final)
    draw = task.final_pictures if final else task.pictures
    return draw(state.model, state.rng)


def _host(pictures: dict) -> dict:
    """Pictures with their images on the host (a collective: every process calls it)."""
    return {what: dataclasses.replace(p, images=parallel.to_host(p.images))
            for what, p in pictures.items()}
