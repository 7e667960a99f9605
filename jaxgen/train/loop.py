"""The shared training loop: the sharded step, the epochs, logging, NaN checks, resume.

A model plugs in as a :class:`~jaxgen.train.task.Task`. Everything else is here, once: the
dataset resident on the devices as uint8, a per-epoch shuffle from a ``jax.random`` key, the step
jitted once with data-parallel shardings over the mesh, logging in the reference's format, the
history, NaN checks, orbax checkpoints every epoch and exact resume.

Keys (``jaxgen.keys``): the shuffle's is folded with the epoch, the step's noise with the global
step, so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from tqdm import tqdm

from jaxgen import parallel
from jaxgen.checkpoint import Checkpoints
from jaxgen.data import IMAGE_SHAPE
from jaxgen.errors import JaxgenError
from jaxgen.keys import named_key
from jaxgen.tensorboard import DIRECTORY as TENSORBOARD
from jaxgen.tensorboard import Board
from jaxgen.train.history import History, write_epoch_outputs, write_history
from jaxgen.train.state import TrainState, abstract_state, init_state
from jaxgen.train.task import Task, resolve_steps_per_call
from jaxgen.workdir import WorkdirLock, checkpoint_dir, ensure_writable, write_atomically


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
    return ", ".join(f"{k}: {float(v):.8f}" for k, v in metrics.items())


def _check_finite(metrics: dict, epoch: int, step: int, ckpts: Checkpoints) -> None:
    for name, value in metrics.items():
        value = np.asarray(value, dtype=float)
        if not np.all(np.isfinite(value)):
            bad = value.ravel()[~np.isfinite(value.ravel())][0]
            raise JaxgenError(f"{name} became {bad} at epoch {epoch}, step {step}; "
                              + _stopped(ckpts))


def _all_finite(tree) -> bool:
    """On the host, from this process's copy: one copy of the model an epoch, where a compiled
    check would be compiled anew for each model."""
    return all(np.isfinite(x).all() for x in jax.tree.leaves(parallel.to_host(tree))
               if jnp.issubdtype(x.dtype, jnp.floating))  # jnp's: bfloat16 is floating too


def _check_finite_state(state: TrainState, epoch: int, ckpts: Checkpoints) -> None:
    if not _all_finite(state.model):
        raise JaxgenError(f"the model's parameters became non-finite in epoch {epoch}; "
                          + _stopped(ckpts))


def _stopped(ckpts: Checkpoints) -> str:
    last_saved = _last_saved(ckpts)
    kept = (f"the last good checkpoint, epoch {last_saved}, is kept in {ckpts.directory}"
            if last_saved else "no checkpoint was written")
    return (f"training stopped and {kept}. Lower the learning rates or change --seed, and use a "
            "new --workdir to start over.")


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    return tqdm(total=total, leave=False, dynamic_ncols=True, file=sys.stderr)


EpochHook = Callable[[Task, TrainState, int, str], None]


def train(task: Task, images: np.ndarray, workdir: str, mesh: Mesh,
          log: Callable[[str], None] = print, labels: Optional[np.ndarray] = None,
          epoch_hooks: Sequence[EpochHook] = (),
          profile_steps: Optional[tuple[int, int]] = None) -> tuple[TrainState, History]:
    """Trains ``task`` on uint8 ``images`` (N, H, W, C) until ``task.config.epochs``; resumes from
    the newest checkpoint in ``workdir`` if there is one. Returns the final state and history.

    ``labels`` (N,) are required by tasks with ``needs_labels``. Each of ``epoch_hooks`` is called
    as ``hook(task, state, epoch, workdir)`` on every process after the task's own epoch_end
    (e.g. an evaluation every few epochs, see ``jaxgen.metrics``). ``profile_steps`` (first,
    last), global 1-based steps, writes a ``jax.profiler`` trace of those steps (of the calls
    holding them, with ``steps_per_call`` > 1) into ``WORKDIR/tensorboard/plugins/profile/``."""
    config = task.config
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
        raise JaxgenError(f"{task.name} trains on {config.dataset}'s images, uint8 of shape "
                          f"(N, {', '.join(map(str, IMAGE_SHAPE))}); got {images.dtype} of shape "
                          f"{images.shape}. Pass data.load_dataset(...).images.")
    if task.needs_labels and (labels is None or len(labels) != len(images)):
        raise JaxgenError(f"{task.name} trains on labelled images: pass one label per image.")
    config.validate()
    parallel.check_batch_size(config.batch_size, mesh)
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
    main = parallel.is_main_process()
    ckpts = Checkpoints(checkpoint_dir(workdir), max_to_keep=config.keep_checkpoints)

    with jax.set_mesh(mesh):
        restored = ckpts.restore_latest(_restore_target(task, workdir, mesh, len(images)),
                                        log=log)
        if restored is None:
            start_epoch = 0
            state = jax.jit(lambda: init_state(task, config.seed),
                            out_shardings=parallel.replicated(mesh))()
            history = History({k: [] for k in task.metric_names}, [])
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
        if main:
            with write_atomically(os.path.join(workdir, "config.json")) as f:
                json.dump({"task": task.name, "config": config.to_dict()}, f, indent=2)
        # TensorBoard's event files, written anew from the checkpoint's history.
        board = Board(workdir, task.name, steps_per_epoch, config.log_every) if main else None
        if board:
            board.rebuild(history.metrics, history.per_epoch_time)
        if start_epoch >= config.epochs:
            log(f"{workdir} already holds {start_epoch} epochs (--epochs {config.epochs}); "
                "nothing to train. Its end-of-run outputs are written anew from the history.")
            if main:  # a run killed after its last checkpoint may lack them
                write_epoch_outputs(task.name, _title(task), workdir, history, config.log_every)
                task.train_end(workdir, history.to_dict())
                board.close()
            ckpts.close()
            return state, history

        data = parallel.put_replicated(images, mesh)
        if task.needs_labels:
            data = (data, parallel.put_replicated(np.asarray(labels, np.int32), mesh))
        compiled = {}  # steps per call -> jitted program

        def run_steps(n: int):
            if n not in compiled:
                compiled[n] = build_train_step(task, mesh, steps_per_epoch, n)
            return compiled[n]

        permutation_fn = build_permutation(mesh, len(images))
        session_start = time.time()
        total_before = history.total_time
        bar_enabled = main and sys.stderr.isatty()
        profile = _Profile(profile_steps, os.path.join(workdir, TENSORBOARD), log)
        per_call = min(resolve_steps_per_call(config, steps_per_epoch), steps_per_epoch)
        if per_call > config.log_every:
            log(f"Each compiled call runs {per_call} steps; their log lines come when it ends "
                "(--steps-per-call 1 prints them as the steps run).")
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
                        host = parallel.to_host(metrics)
                        last = {k: host[k][i - done - 1] for k in task.metric_names}
                        _check_finite(last, epoch, i, ckpts)
                        write(f"Epoch: [{epoch:2d}] [{i:4d}/{steps_per_epoch:4d}] "
                              + _format_metrics(last))
                        if board:
                            board.step(epoch, i, last)
                done += n
            if bar:
                bar.close()
            epoch_metrics = {k: np.concatenate([c[k] for c in parallel.to_host(chunks)])
                             for k in task.metric_names}
            _check_finite(epoch_metrics, epoch, steps_per_epoch, ckpts)
            history.per_epoch_time.append(time.time() - epoch_start)
            for k in task.metric_names:
                history.metrics[k].extend(epoch_metrics[k].tolist())
            history.total_time = total_before + (time.time() - session_start)
            model, lines = task.update_after_epoch(state.model, epoch_metrics)
            state = state.replace(model=model)
            for line in lines:
                log(line)
            task.epoch_end(state, epoch, workdir)
            for hook in epoch_hooks:
                hook(task, state, epoch, workdir)
            _check_finite_state(state, epoch, ckpts)
            # The next step donates (reuses) the state's buffers: the save reads them first.
            _save(ckpts, epoch, state, {"task": task.name, "epoch": epoch,
                                        "num_images": len(images), "config": config.to_dict(),
                                        "history": history.to_dict()})
            if main:
                write_epoch_outputs(task.name, _title(task), workdir, history, config.log_every)
                board.epoch_end(epoch, history.per_epoch_time[-1])

        history.total_time = total_before + (time.time() - session_start)
        log(f"Avg one epoch time: {np.mean(history.per_epoch_time):.2f}, total {config.epochs} "
            f"epochs time: {history.total_time:.2f}")
        log("Training finish!... save training results")
        if main:
            write_history(task.name, _title(task), workdir, history)
            task.train_end(workdir, history.to_dict())
            board.close()
        ckpts.wait()
        ckpts.close()
    return state, history


def _save(ckpts: Checkpoints, epoch: int, state: TrainState, meta: dict) -> None:
    """Saves the checkpoint of ``epoch`` and waits for it. A disk that runs out of space is one
    error naming the directory and the size needed, with the partial save removed (the earlier
    checkpoints are untouched)."""
    try:
        ckpts.save(epoch, state, meta)
        ckpts.wait()
    except Exception as e:
        if not _is_disk_full(e):
            raise
        ckpts.discard_partial(epoch)
        needed = sum(x.nbytes for x in jax.tree.leaves(state)) / 2 ** 20
        raise JaxgenError(
            f"no space left on the device of {ckpts.directory} to save the checkpoint of epoch "
            f"{epoch} (about {needed:.0f} MB needed); the partial save was removed and the "
            "earlier checkpoints are intact. Free some space and rerun the same command to "
            "resume.") from None


def _is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a full disk, however the writer reports it."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _title(task: Task) -> str:
    return f"{task.name} on {task.config.dataset}"


def _last_saved(ckpts: Checkpoints) -> Optional[int]:
    ckpts.wait()
    return (ckpts.epochs() or [None])[-1]


def build_train_step(task: Task, mesh: Mesh, steps_per_epoch: int, steps_per_call: int = 1,
                     compiler_options: Optional[dict] = None):
    """``run(state, data, perm) -> (state, metrics)``: ``steps_per_call`` train steps in one
    jitted program, sharded over ``mesh``; each metric comes back with one value per step.
    ``data`` is the uint8 image array, or (images, labels) for a task with ``needs_labels``.
    ``compiler_options`` default to ``parallel.compiler_options(mesh)``; ``{}`` compiles with
    XLA's defaults."""
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

    def steps(state: TrainState, data, perm: jax.Array):
        if steps_per_call == 1:
            state, metrics = step(state, data, perm)
            return state, jax.tree.map(lambda m: m[None], metrics)
        return lax.scan(lambda s, _: step(s, data, perm), state, length=steps_per_call)

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


def build_permutation(mesh: Mesh, num_images: int):
    """``permutation(rng, epoch)``: the epoch's shuffle of the dataset, from the run's key."""

    def permutation(rng: jax.Array, epoch: jax.Array) -> jax.Array:
        return jax.random.permutation(named_key(rng, "shuffle", epoch), num_images)

    return jax.jit(permutation, out_shardings=parallel.replicated(mesh))
