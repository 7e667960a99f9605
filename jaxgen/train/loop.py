"""The shared training core: state, keys, the sharded step, the epoch loop, resume.

A model plugs in as a :class:`Task`: how to initialise its pytree, one pure train step on a batch
of images, and what to draw after each epoch. Everything else is here, once: the dataset resident
on the devices as uint8, a per-epoch shuffle from a ``jax.random`` key, the step jitted once with
data-parallel shardings over the mesh, logging in the reference's format, the history, NaN checks,
orbax checkpoints every epoch and exact resume.

Keys: one root key from the seed, stored in the state. Every other key is derived from it by
purpose and by position (``fold_in`` of the epoch for the shuffle, of the global step for the
noise), so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax
from jax.sharding import Mesh

from jaxgen import parallel, viz
from jaxgen.checkpoint import Checkpoints
from jaxgen.errors import JaxgenError

# fold_in constants naming what a derived key is for.
KEY_PURPOSES = {"init": 0, "shuffle": 1, "noise": 2, "sample": 3}


def named_key(rng: jax.Array, purpose: str, *positions) -> jax.Array:
    """The key for ``purpose`` (one of KEY_PURPOSES), folded with e.g. the epoch or the step."""
    key = jax.random.fold_in(rng, KEY_PURPOSES[purpose])
    for position in positions:
        key = jax.random.fold_in(key, position)
    return key


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Fields every experiment has. Subclasses add the model's; all are saved with checkpoints."""

    dataset: str = "mnist"
    epochs: int = 50
    batch_size: int = 64
    seed: int = 0
    log_every: int = 100  # steps between log lines
    keep_checkpoints: int = 3
    # Train steps per call of the compiled program (a lax.scan over steps): 1 dispatches every
    # step from Python; a whole epoch (e.g. 937) makes one program of it, which saves the
    # per-step dispatch on accelerators. It does not change what is computed.
    steps_per_call: int = 1

    # Fields a resumed run may change; every other field must match the checkpoint's.
    RESUMABLE = ("epochs", "log_every", "keep_checkpoints", "steps_per_call")

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "log_every", "keep_checkpoints", "steps_per_call"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                flag = "--" + name.replace("_", "-")
                raise JaxgenError(f"{flag} must be a positive integer, got {value}.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class TrainState(struct.PyTreeNode):
    step: jax.Array  # global step, int32
    rng: jax.Array  # root key (raw uint32[2]); all randomness derives from it
    model: Any  # the task's pytree: params, batch statistics, optimiser states


class Task(abc.ABC):
    """A model as the training core sees it."""

    name: str  # file prefix and checkpoint tag, e.g. "GAN"
    metric_names: tuple[str, ...]  # scalars the train step returns, logged as "name: value"
    config: TrainConfig
    # True for supervised tasks (a classifier): train_step then also gets the batch's int32 labels.
    needs_labels: bool = False

    @abc.abstractmethod
    def init(self, key: jax.Array) -> Any:
        """The model pytree for a fresh run."""

    @abc.abstractmethod
    def train_step(self, model: Any, images: jax.Array, key: jax.Array,
                   labels: Optional[jax.Array] = None) -> tuple[Any, dict]:
        """One update on a global batch of images in [-1, 1], shape (B, H, W, C), and their
        labels (B,) when ``needs_labels``. Pure."""

    def sample_images(self, model: Any, key: jax.Array, num: int) -> jax.Array:
        """``num`` images in [-1, 1], shape (num, H, W, C), drawn from a generative model (GAN:
        z from the prior through G; VAE: z from the prior through the decoder's mean)."""
        raise NotImplementedError(f"{self.name} is not a generative model")

    def epoch_end(self, state: TrainState, epoch: int, workdir: str) -> None:
        """Pictures after ``epoch`` (1-based). Runs on every process; process 0 writes files."""

    def train_end(self, workdir: str, history: dict) -> None:
        """Pictures after the last epoch (process 0 only)."""


@dataclasses.dataclass
class History:
    """The reference's ``train_hist``: per-step metrics, per-epoch times, total time (seconds)."""

    metrics: dict[str, list[float]]
    per_epoch_time: list[float]
    total_time: float = 0.0

    def to_dict(self) -> dict:
        return {**self.metrics, "per_epoch_time": self.per_epoch_time,
                "total_time": [self.total_time]}

    @classmethod
    def from_dict(cls, d: dict, metric_names) -> "History":
        total = d.get("total_time") or [0.0]
        return cls({k: list(d[k]) for k in metric_names}, list(d["per_epoch_time"]), total[0])


def ensure_writable(workdir: str) -> str:
    workdir = os.path.abspath(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir):
            pass
    except OSError as e:
        raise JaxgenError(f"--workdir {workdir} is not writable ({e.strerror}); pass a directory "
                          "you can write to.") from None
    return workdir


def check_workdir(workdir: str) -> None:
    """Fails, creating nothing, if ``workdir`` could not be created or written."""
    path = os.path.abspath(workdir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        raise JaxgenError(f"--workdir {workdir} is not writable ({path} is not a writable "
                          "directory); pass a directory you can write to.")


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, "checkpoints")


def abstract_state(task: Task, mesh: Mesh) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of the task's train state, without computing it."""
    shapes = jax.eval_shape(lambda: init_state(task, task.config.seed))
    sharding = parallel.replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        shapes)


def init_state(task: Task, seed: int) -> TrainState:
    rng = jax.random.PRNGKey(seed)
    return TrainState(step=jnp.zeros((), jnp.int32), rng=rng,
                      model=task.init(named_key(rng, "init")))


def config_conflicts(saved: dict, config: TrainConfig) -> list[str]:
    # Compared as JSON gives them back (a tuple field is saved as a list).
    current = json.loads(json.dumps(config.to_dict()))
    return [f"{k}={saved.get(k)!r} (this command: {v!r})" for k, v in current.items()
            if k not in config.RESUMABLE and saved.get(k) != v]


def _restore_target(task: Task, workdir: str, mesh: Mesh, num_images: int):
    """Checks a checkpoint's meta against this run; gives the abstract state to restore onto."""
    abstract = abstract_state(task, mesh)

    def target(meta: dict) -> TrainState:
        if meta.get("task") != task.name:
            raise JaxgenError(f"--workdir {workdir} holds a {meta.get('task')} run, not a "
                              f"{task.name} run; pass another --workdir.")
        conflicts = config_conflicts(meta["config"], task.config)
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


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                              if jnp.issubdtype(x.dtype, jnp.floating)]))


def _check_finite_state(state: TrainState, epoch: int, ckpts: Checkpoints) -> None:
    if not bool(parallel.to_host(_all_finite(state.model))):
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
    from tqdm import tqdm
    return tqdm(total=total, leave=False, dynamic_ncols=True, file=sys.stderr)


EpochHook = Callable[[Task, TrainState, int, str], None]


def train(task: Task, images: np.ndarray, workdir: str, mesh: Mesh,
          log: Callable[[str], None] = print, labels: Optional[np.ndarray] = None,
          epoch_hooks: Sequence[EpochHook] = ()) -> tuple[TrainState, History]:
    """Trains ``task`` on uint8 ``images`` (N, H, W, C) until ``task.config.epochs``; resumes from
    the newest checkpoint in ``workdir`` if there is one. Returns the final state and history.

    ``labels`` (N,) are required by tasks with ``needs_labels``. Each of ``epoch_hooks`` is called
    as ``hook(task, state, epoch, workdir)`` on every process after the task's own epoch_end
    (e.g. an evaluation every few epochs, see ``jaxgen.metrics``)."""
    config = task.config
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
    workdir = ensure_writable(workdir)
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
            history = History.from_dict(meta["history"], task.metric_names)
            log(f"Resuming from the checkpoint of epoch {start_epoch} in {ckpts.directory}.")
        if main:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                json.dump({"task": task.name, "config": config.to_dict()}, f, indent=2)
        if start_epoch >= config.epochs:
            log(f"{workdir} already holds {start_epoch} epochs (--epochs {config.epochs}); "
                "nothing to train.")
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
        for epoch in range(start_epoch + 1, config.epochs + 1):
            epoch_start = time.time()
            perm = permutation_fn(state.rng, jnp.int32(epoch))
            bar = _progress(steps_per_epoch, bar_enabled)
            write = bar.write if bar else log
            chunks, done = [], 0
            while done < steps_per_epoch:
                n = min(config.steps_per_call, steps_per_epoch - done)
                state, metrics = run_steps(n)(state, data, perm)  # metrics: (n,) per name
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
            task.epoch_end(state, epoch, workdir)
            for hook in epoch_hooks:
                hook(task, state, epoch, workdir)
            _check_finite_state(state, epoch, ckpts)
            ckpts.save(epoch, state, {"task": task.name, "epoch": epoch, "num_images": len(images),
                                      "config": config.to_dict(), "history": history.to_dict()})
            # The next step donates (reuses) the state's buffers: let the save read them first.
            ckpts.wait()
            if main:
                _write_epoch_outputs(task, workdir, history, config.log_every)

        history.total_time = total_before + (time.time() - session_start)
        log(f"Avg one epoch time: {np.mean(history.per_epoch_time):.2f}, total {config.epochs} "
            f"epochs time: {history.total_time:.2f}")
        if main:
            _write_history(task, workdir, history)
            task.train_end(workdir, history.to_dict())
        ckpts.wait()
        ckpts.close()
    return state, history


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
        gather = lambda x: parallel.shard_batch(jnp.take(x, idx, axis=0))  # noqa: E731
        key = named_key(state.rng, "noise", state.step)
        if task.needs_labels:
            images, labels = data
            extra = (gather(labels),)
        else:
            images, extra = data, ()
        images = gather(images).astype(jnp.float32) / 127.5 - 1.0  # [0, 255] -> [-1, 1]
        model, metrics = task.train_step(state.model, images, key, *extra)
        return state.replace(step=state.step + 1, model=model), metrics

    def run(state: TrainState, data, perm: jax.Array):
        if steps_per_call == 1:
            state, metrics = step(state, data, perm)
            return state, jax.tree.map(lambda m: m[None], metrics)
        return lax.scan(lambda s, _: step(s, data, perm), state, length=steps_per_call)

    if compiler_options is None:
        compiler_options = parallel.compiler_options(mesh)
    return jax.jit(run, in_shardings=(repl, repl, repl), out_shardings=(repl, repl),
                   donate_argnums=0, compiler_options=compiler_options or None)


def build_permutation(mesh: Mesh, num_images: int):
    """``permutation(rng, epoch)``: the epoch's shuffle of the dataset, from the run's key."""

    def permutation(rng: jax.Array, epoch: jax.Array) -> jax.Array:
        return jax.random.permutation(named_key(rng, "shuffle", epoch), num_images)

    return jax.jit(permutation, out_shardings=parallel.replicated(mesh))


def _write_history(task: Task, workdir: str, history: History) -> None:
    with open(os.path.join(workdir, f"{task.name}_history.json"), "w") as f:
        json.dump(history.to_dict(), f)
    viz.plot_curves({k: history.metrics[k] for k in task.metric_names},
                    os.path.join(workdir, f"{task.name}_loss.png"),
                    title=f"{task.name} on {task.config.dataset}")


def _write_epoch_outputs(task: Task, workdir: str, history: History, log_every: int) -> None:
    """``metrics.jsonl`` (the logged steps and a summary per epoch, written anew from the
    history so a resumed run has each row once), the history JSON and the loss plot."""
    epochs = len(history.per_epoch_time)
    steps = len(next(iter(history.metrics.values()))) // epochs
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for epoch in range(1, epochs + 1):
            offset = (epoch - 1) * steps
            for i in range(log_every, steps + 1, log_every):
                row = {"epoch": epoch, "step": i,
                       **{k: v[offset + i - 1] for k, v in history.metrics.items()}}
                f.write(json.dumps(row) + "\n")
            summary = {"epoch": epoch, "epoch_time": history.per_epoch_time[epoch - 1],
                       **{f"mean_{k}": float(np.mean(v[offset:offset + steps]))
                          for k, v in history.metrics.items()}}
            f.write(json.dumps(summary) + "\n")
    _write_history(task, workdir, history)


def epoch_images(workdir: str, prefix: str) -> list[str]:
    names = sorted(n for n in os.listdir(workdir)
                   if n.startswith(prefix + "_epoch") and n.endswith(".png"))
    return [os.path.join(workdir, n) for n in names]
