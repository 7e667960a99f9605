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
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jaxgen.errors import JaxgenError


class Checkpoints:
    """A directory of per-epoch checkpoints (orbax ``CheckpointManager``; steps are epochs)."""

    def __init__(self, directory: str, max_to_keep: int = 3, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                               read_only=read_only)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "meta"))

    def epochs(self) -> list[int]:
        """The epochs with a finished checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, epoch: int, state: Any, meta: dict) -> None:
        self._manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    def read_meta(self, epoch: int) -> dict:
        return self._manager.restore(epoch, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta

    def restore(self, epoch: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores onto the shardings of ``abstract_state`` (any device count)."""
        restored = self._manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    def restore_latest(self, abstract_state: Any, check_meta: Callable[[dict], None],
                       log: Callable[[str], None] = print,
                       quarantine: bool = True) -> Optional[tuple[int, Any, dict]]:
        """The newest readable checkpoint as (epoch, state, meta); None if there is none at all.

        ``check_meta`` sees the meta before any array is read and raises ``JaxgenError`` when the
        checkpoint belongs to another run. An unreadable checkpoint is reported and, with
        ``quarantine``, moved aside into ``<directory>-corrupt/`` (nothing is deleted); then the
        previous one is tried. If checkpoints exist but none is readable, that is an error: a run
        never silently starts over.
        """
        epochs = self.epochs()
        if not epochs:
            return None
        for epoch in reversed(epochs):
            try:
                meta = self.read_meta(epoch)
            except Exception as e:  # noqa: BLE001 - any failure to read means corrupt
                self._report_corrupt(epoch, e, log, quarantine)
                continue
            check_meta(meta)
            try:
                state, meta = self.restore(epoch, abstract_state)
            except Exception as e:  # noqa: BLE001
                self._report_corrupt(epoch, e, log, quarantine)
                continue
            return epoch, state, meta
        raise JaxgenError(
            f"none of the checkpoints in {self.directory} can be read (epochs {epochs}); move "
            "that directory away to start the run over, or pass a new --workdir.")

    def _report_corrupt(self, epoch: int, error: Exception, log, quarantine: bool) -> None:
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        path = os.path.join(self.directory, str(epoch))
        if not quarantine:
            log(f"warning: checkpoint of epoch {epoch} ({path}) cannot be read ({reason}); "
                "trying the previous one.")
            return
        target = os.path.join(self.directory + "-corrupt", f"{epoch}-{int(time.time())}")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(path, target)
        multihost_utils.sync_global_devices(f"jaxgen-quarantine-{epoch}")
        self._manager.reload()
        log(f"warning: checkpoint of epoch {epoch} cannot be read ({reason}); moved it to "
            f"{target} and resuming from the previous one.")

    def wait(self) -> None:
        """Blocks until asynchronous saves have been written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
