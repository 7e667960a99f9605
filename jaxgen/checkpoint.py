"""Orbax checkpoints of a training run: one per epoch, the last few kept.

Each checkpoint holds two items: ``state`` (the train-state pytree: params, batch statistics,
optimiser states, step, root key) and ``meta`` (JSON: the run's config, its history, the epoch).
The meta is read first and on its own, so a run can check its config against a checkpoint before
restoring arrays whose shapes that config decides.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import shutil
import sys
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jaxgen.errors import JaxgenError


class _ReadOnlyNotice(logging.Filter):
    """Drops two of orbax's notices that say nothing to act on: that a directory opened
    read-only is read-only (reading a finished run, for sampling or evaluation, is what
    read-only is for; the line would print on each open), and how long a save waited for the
    previous one (every epoch's save is waited for on purpose, before training goes on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Given directory is read only",
                                                   "Waiting for previous save to complete"))


class _UnparsableInfoNotice(logging.Filter):
    """Orbax's ``_CHECKPOINT_METADATA`` holds only timestamps; when it is not valid JSON orbax
    logs the whole file at ERROR level each time the directory is opened, though the checkpoint
    restores as usual. This says it once per file, in one line."""

    def __init__(self):
        super().__init__()
        self._seen = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("Failed to json parse Metadata file: "):
            return True
        path = message[len("Failed to json parse Metadata file: "):].split(",", 1)[0]
        if path in self._seen:
            return False
        self._seen.add(path)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg, record.args = (f"{path} is not valid JSON; it holds only orbax's timestamps, "
                                   "and the checkpoint is read without it."), ()
        return True


class _InterruptionNotice(logging.Filter):
    """Orbax reports a save interrupted by Ctrl-C or SIGTERM as a failed thread, with a
    traceback; the script says it in one line already (what the interruption left is discarded
    by the next run). Errors are kept: only records of an interruption are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        kind = record.exc_info[0] if record.exc_info else None
        return not (kind is not None and issubclass(kind, BaseException)
                    and not issubclass(kind, Exception))


_NOTICE_FILTERS = (_ReadOnlyNotice(), _UnparsableInfoNotice(),  # one of each: "seen" is kept
                   _InterruptionNotice())


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax's notices above filtered while jaxgen talks to orbax, and only then: a program
    that imports jaxgen keeps its own logging as it was."""
    logger = logging.getLogger("absl")
    for f in _NOTICE_FILTERS:
        logger.addFilter(f)
    try:
        yield
    finally:
        for f in _NOTICE_FILTERS:
            logger.removeFilter(f)


def _quietly(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with _quiet_orbax():
            return method(*args, **kwargs)
    return wrapper


_failed_reads = False  # whether a restore in this process failed while reading arrays
_failed_saves = False  # whether a save in this process failed or was interrupted
_held_unraisable: Optional[list] = None  # a save in progress: its loops' reports, held back
_lingering: list = []  # the reports of a failed save still sent to its file (_HeldReports)


def _drop_abandoned_reads(previous_hook):
    """A ``sys.unraisablehook`` for what a failed restore or save leaves behind. Orbax reads and
    writes arrays concurrently; when one fails, the others are abandoned, and as they finish or
    are collected they raise again where nothing can catch it: Python would print each
    ("Exception ignored in: <coroutine object _read_array_index_and_device_put ...>", or
    tensorstore's callbacks' "RuntimeError: Event loop is closed") with a long traceback, often
    at exit, dozens of them. The cause is in the fallback's warning line or the save's error
    line already: after a failed restore or save those are dropped; any other report goes to
    ``previous_hook``."""

    def hook(unraisable) -> None:
        code = getattr(unraisable.object, "cr_code", None)
        abandoned_read = code is not None and code.co_name == "_read_array_index_and_device_put"
        loop_closed = (isinstance(unraisable.exc_value, RuntimeError)
                       and str(unraisable.exc_value) == "Event loop is closed")
        if (_failed_reads and (abandoned_read or loop_closed)) or (_failed_saves
                                                                   and loop_closed):
            return
        if loop_closed and _held_unraisable is not None:  # a save's: shown if it succeeds
            _held_unraisable.append(unraisable)
            return
        previous_hook(unraisable)

    return hook


def drop_abandoned_reads() -> None:
    """Installs :func:`_drop_abandoned_reads` as ``sys.unraisablehook`` (once). jaxgen's scripts
    call it at start-up (``jaxgen.cli.run``); importing jaxgen does not."""
    if not getattr(sys.unraisablehook, "_jaxgen", False):
        hook = _drop_abandoned_reads(sys.unraisablehook)
        hook._jaxgen = True
        sys.unraisablehook = hook


def failure_reason(error: BaseException) -> str:
    """One short line saying why a checkpoint could not be read: the error's first line, without
    the object reprs and pointers to details that tensorstore appends."""
    text = (str(error).strip().splitlines() or [""])[0]
    text = re.sub(r"\s*See full TensorStore details:.*", "", text)
    text = re.sub(r"<bound method[^>]*>?", "", text).strip(" ;:.")
    return text[:200] or type(error).__name__


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

# Where a failed save's reports from orbax's threads are kept (beside the checkpoints).
DEBUG_LOG = "jaxgen-debug.log"


# The loggers of orbax's threads (absl) and of the asyncio loops they run.
_SAVE_LOGGERS = ("absl", "asyncio")


class _HeldReports(logging.Filter):
    """Orbax's warnings and errors held back while a save runs (from any thread). A save that
    fails for want of space writes them into a file (:meth:`keep_in`), and so every later one
    of its abandoned writes; otherwise they are shown afterwards (:meth:`release`)."""

    _FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(threadName)s %(message)s")

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.path: Optional[str] = None

    def hold(self) -> "_HeldReports":
        for name in _SAVE_LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        if self.path is None:
            self.records.append(record)
        else:
            self._append([record])
        return False

    def release(self, show: bool = True) -> None:
        """Stops holding; shows what was held, as it would have been shown."""
        for name in _SAVE_LOGGERS:
            logging.getLogger(name).removeFilter(self)
        for record in self.records if show else ():
            logging.getLogger(record.name).handle(record)
        self.records = []

    def keep_in(self, path: str) -> str:
        """From now on (until the next save starts), writes the held reports and every later
        one into ``path``; the sentence that names it."""
        self.path = path
        _lingering.append(self)
        if not self._append(self.records):
            return " (orbax's reports of it could not be written either)"
        return f" Orbax's reports of the failure: {path}."

    def _append(self, records) -> bool:
        try:
            with open(self.path, "a") as f:
                for record in records:
                    f.write(self._FORMAT.format(record) + "\n")
        except OSError:
            return False
        return True


# What every checkpoint's meta holds (jaxgen.train.loop writes them).
REQUIRED_META = ("task", "epoch", "config", "history")


class Checkpoints:
    """A directory of per-epoch checkpoints (orbax ``CheckpointManager``; steps are epochs)."""

    @_quietly
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

    @_quietly
    def epochs(self) -> list[int]:
        """The epochs with a finished checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    @_quietly
    def save(self, epoch: int, state: Any, meta: dict) -> None:
        self._manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)))

    @_quietly
    def save_and_wait(self, epoch: int, state: Any, meta: dict) -> None:
        """Saves the checkpoint of ``epoch`` and waits for it. A disk that runs out of space is
        one error naming the directory and the size needed, with the partial save removed (the
        earlier checkpoints are untouched); what orbax's threads reported of it is kept in
        :data:`DEBUG_LOG` beside the checkpoints' directory instead of printed. Any other
        failure is raised with orbax's reports shown as they came."""
        global _failed_saves, _held_unraisable
        while _lingering:  # an earlier failed save's abandoned writes are over by now
            _lingering.pop().release(show=False)
        held, _held_unraisable = _HeldReports().hold(), []
        try:
            self.save(epoch, state, meta)
            self.wait()
        except BaseException as e:
            _failed_saves = True  # its abandoned writes' callbacks raise at random later
            _held_unraisable = None
            if not _is_disk_full(e):
                held.release()
                raise
            self.discard_partial(epoch)
            needed = sum(x.nbytes for x in jax.tree.leaves(state)) / 2 ** 20
            # Orbax's threads go on failing after this: their reports too go to the file.
            details = held.keep_in(os.path.join(os.path.dirname(self.directory), DEBUG_LOG))
            raise JaxgenError(
                f"no space left on the device of {self.directory} to save the checkpoint of "
                f"epoch {epoch} (about {needed:.0f} MB needed); the partial save was removed and "
                "the earlier checkpoints are intact. Free some space and rerun the same command "
                f"to resume.{details}") from None
        held.release()
        unraisable, _held_unraisable = _held_unraisable, None
        for report in unraisable:
            sys.unraisablehook(report)

    def read_meta(self, epoch: int) -> dict:
        """The meta of ``epoch``'s checkpoint; a ValueError if it lacks a required field."""
        meta = self._manager.restore(epoch, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta
        missing = [k for k in self.required_meta if not isinstance(meta, dict) or k not in meta]
        if missing:
            raise ValueError(f"its metadata lacks {', '.join(missing)}")
        return meta

    @_quietly
    def discard_partial(self, epoch: int) -> None:
        """Removes what an interrupted save of ``epoch`` left (process 0 removes, all wait)."""
        if jax.process_index() == 0 and os.path.isdir(self.directory):
            for name in os.listdir(self.directory):
                if name == str(epoch) or name.startswith(f"{epoch}.orbax-checkpoint-tmp"):
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        multihost_utils.sync_global_devices("jaxgen-discard-partial")
        self._manager.reload()

    @_quietly
    def restore(self, epoch: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores onto the shardings of ``abstract_state`` (any device count)."""
        restored = self._manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                abstract_state,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state)),
            meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    @_quietly
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
                global _failed_reads
                _failed_reads = True
                reason = failure_reason(e)
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

    @_quietly
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

    @_quietly
    def wait(self) -> None:
        """Blocks until asynchronous saves have been written."""
        self._manager.wait_until_finished()

    @_quietly
    def close(self) -> None:
        self._manager.close()


def _is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a full disk, however the writer reports it."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False
