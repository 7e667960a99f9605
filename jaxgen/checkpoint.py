"""Orbax checkpoints of a training run: one per epoch, the last few kept.

Each checkpoint holds two items: ``state`` (the train-state pytree: params, batch statistics,
optimiser states, step, root key) and ``meta`` (JSON: the run's config, its history, the epoch).
The meta is read first and on its own, so a run can check its config against a checkpoint before
restoring arrays whose shapes that config decides.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jaxgen import checkpoint_reports as reports
from jaxgen.errors import JaxgenError

# How the state's leaves are written: orbax's standard handlers, except that one replica writes
# each replicated array whole. Orbax's default splits each among its replicas, at the cost of a
# slicing op per leaf and device, each compiled for its shape: a loss for states of this size
# (docs/performance.md, "Checkpoints"). jaxgen's states hold only jax.Arrays (the key too: a
# raw uint32 one); the scalar and numpy handlers serve a task of one's own that keeps such
# leaves. Orbax's per-host array metadata is not written: each array is written whole, by the
# one process that holds its replica 0.
_STATE_TYPES = ocp.type_handlers.create_type_handler_registry(
    (int, ocp.type_handlers.ScalarHandler()),
    (float, ocp.type_handlers.ScalarHandler()),
    (np.number, ocp.type_handlers.ScalarHandler()),
    (np.ndarray, ocp.type_handlers.NumpyHandler()),
    (jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False)),
)

# What every checkpoint's meta holds (jaxgen.train.loop writes them).
REQUIRED_META = ("task", "epoch", "config", "history")


class Checkpoints:
    """A directory of per-epoch checkpoints (orbax ``CheckpointManager``; steps are epochs)."""

    @reports.quietly
    def __init__(self, directory: str, max_to_keep: int = 3, read_only: bool = False,
                 required_meta: tuple = REQUIRED_META):
        """``required_meta``: the fields a checkpoint's meta must have; one without them is
        corrupt, like one whose bytes cannot be read."""
        self.directory = os.path.abspath(directory)
        self.required_meta = required_meta
        # cleanup_tmp_directories: a save cut short (kill -9) leaves a temporary directory.
        options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else max_to_keep,
                                               save_interval_steps=0 if read_only else 1,
                                               create=not read_only, read_only=read_only,
                                               cleanup_tmp_directories=not read_only)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.PyTreeCheckpointHandler(
                type_handler_registry=_STATE_TYPES), "meta": ocp.JsonCheckpointHandler()})

    @reports.quietly
    def epochs(self) -> list[int]:
        """The epochs with a finished checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    @reports.quietly
    def save(self, epoch: int, state: Any, meta: dict) -> None:
        self._manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)))

    @reports.quietly
    def save_and_wait(self, epoch: int, state: Any, meta: dict) -> None:
        """Saves the checkpoint of ``epoch`` and waits for it. A disk that runs out of space is
        one error naming the directory and the size needed, with the partial save removed (the
        earlier checkpoints are untouched); what orbax's threads reported of it is kept in
        :data:`jaxgen.checkpoint_reports.DEBUG_LOG` beside the checkpoints' directory instead
        of printed. Any other failure is raised with orbax's reports shown as they came."""
        with reports.held_save_reports() as held:
            try:
                self.save(epoch, state, meta)
                self.wait()
            except BaseException as e:
                if not reports.is_disk_full(e):
                    raise
                self.discard_partial(epoch)
                needed = sum(x.nbytes for x in jax.tree.leaves(state)) / 2 ** 20
                # Orbax's threads go on failing after this: their reports too go to the file.
                details = held.keep_in(os.path.join(os.path.dirname(self.directory),
                                                    reports.DEBUG_LOG))
                raise JaxgenError(
                    f"no space left on the device of {self.directory} to save the checkpoint of "
                    f"epoch {epoch} (about {needed:.0f} MB needed); the partial save was removed "
                    "and the earlier checkpoints are intact. Free some space and rerun the same "
                    f"command to resume.{details}") from None

    def read_meta(self, epoch: int) -> dict:
        """The meta of ``epoch``'s checkpoint; a ValueError if it lacks a required field."""
        meta = self._manager.restore(epoch, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta
        missing = [k for k in self.required_meta if not isinstance(meta, dict) or k not in meta]
        if missing:
            raise ValueError(f"its metadata lacks {', '.join(missing)}")
        return meta

    @reports.quietly
    def discard_partial(self, epoch: int) -> None:
        """Removes what an interrupted save of ``epoch`` left (process 0 removes, all wait)."""
        if jax.process_index() == 0 and os.path.isdir(self.directory):
            for name in os.listdir(self.directory):
                if name == str(epoch) or name.startswith(f"{epoch}.orbax-checkpoint-tmp"):
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        multihost_utils.sync_global_devices("jaxgen-discard-partial")
        self._manager.reload()

    @reports.quietly
    def restore(self, epoch: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores onto the shardings of ``abstract_state`` (any device count)."""
        restored = self._manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                abstract_state,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state)),
            meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    @reports.quietly
    def restore_latest(self, target: Callable[[dict], Any], log: Callable[[str], None] = print,
                       quarantine: bool = True) -> Optional[tuple[int, Any, dict]]:
        """The newest readable checkpoint as (epoch, state, meta); None if there is none at all.

        ``target(meta)`` sees a checkpoint's meta before any array is read: it raises
        ``JaxgenError`` when the checkpoint belongs to another run, else returns the abstract state
        (shapes, dtypes, shardings) to restore onto. An unreadable checkpoint is reported and the
        previous one is tried. Once an older one has been restored, the newer unreadable ones are
        moved aside into ``<directory>-corrupt/`` (with ``quarantine``; nothing is deleted) so that
        training can save those epochs again. If checkpoints exist but none is readable, nothing
        is moved and that is an error: a run never silently starts over.
        """
        epochs = self.epochs()
        if not epochs:
            return None
        unreadable = []
        for epoch in reversed(epochs):
            try:
                state, meta = self.restore(epoch, target(self.read_meta(epoch)))
            except JaxgenError:
                raise
            except Exception as e:  # any failure to read: try the previous one
                reports.note_failed_read()
                reason = reports.failure_reason(e)
                unreadable.append(f"epoch {epoch}: {reason}")
                log(f"warning: checkpoint of epoch {epoch} cannot be read ({reason}); trying "
                    "the previous one.")
                continue
            if unreadable and quarantine:
                self._quarantine([e for e in epochs if e > epoch], log)
            return epoch, state, meta
        raise JaxgenError(
            f"none of the checkpoints in {self.directory} can be read ({'; '.join(unreadable)}); "
            "nothing was moved: if the cause was passing, rerun, else move that directory away "
            "to start over or pass a new --workdir.")

    @reports.quietly
    def _quarantine(self, epochs: list[int], log) -> None:
        target_root = self.directory + "-corrupt"
        for epoch in epochs:
            target = os.path.join(target_root, f"{epoch}-{int(time.time())}")
            if jax.process_index() == 0:
                os.makedirs(target_root, exist_ok=True)
                shutil.move(os.path.join(self.directory, str(epoch)), target)
            log(f"warning: moved the unreadable checkpoint of epoch {epoch} to {target}.")
        multihost_utils.sync_global_devices("jaxgen-quarantine")
        self._manager.reload()

    @reports.quietly
    def wait(self) -> None:
        """Blocks until asynchronous saves have been written."""
        self._manager.wait_until_finished()

    @reports.quietly
    def close(self) -> None:
        self._manager.close()
