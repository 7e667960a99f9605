"""What orbax reports while jaxgen saves and restores checkpoints, made readable.

Orbax logs through absl and runs its reads and writes on threads and asyncio loops. Its notices
that say nothing to act on are filtered while jaxgen talks to orbax (:func:`quiet_orbax`, and
only then); a save holds its threads' warnings back and shows them after it, or writes them into
:data:`DEBUG_LOG` when the disk is full (:func:`held_save_reports`); what a failed restore or
save leaves raising where nothing can catch it is dropped by a ``sys.unraisablehook`` that the
scripts install at start-up (:func:`drop_abandoned_reads`). Importing this changes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import re
import sys
from typing import Optional


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


_quiet_depth = 0  # how many quiet_orbax blocks are open (a quiet method calls another)


@contextlib.contextmanager
def quiet_orbax():
    """Orbax's notices above filtered while jaxgen talks to orbax, and only then: a program
    that imports jaxgen keeps its own logging as it was. Nested blocks keep the filters until
    the outermost one ends."""
    global _quiet_depth
    logger = logging.getLogger("absl")
    if _quiet_depth == 0:
        for f in _NOTICE_FILTERS:
            logger.addFilter(f)
    _quiet_depth += 1
    try:
        yield
    finally:
        _quiet_depth -= 1
        if _quiet_depth == 0:
            for f in _NOTICE_FILTERS:
                logger.removeFilter(f)


def quietly(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with quiet_orbax():
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


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a full disk, however the writer reports it."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def note_failed_read() -> None:
    """Says that a restore in this process failed while reading arrays: the reads it abandoned
    raise later, where nothing can catch them, and :func:`drop_abandoned_reads` drops them."""
    global _failed_reads
    _failed_reads = True


@contextlib.contextmanager
def held_save_reports():
    """Around one save and its wait: orbax's warnings and errors (from any thread) and the
    loop-closed reports of its writes are held back. A save that succeeds shows them as they
    came; one that fails shows the warnings and errors and drops the loop-closed reports (its
    abandoned writes', raised at random later), unless it called the yielded holder's
    :meth:`_HeldReports.keep_in`, which sends the warnings and errors, and every later one, into
    a file instead."""
    global _failed_saves, _held_unraisable
    while _lingering:  # an earlier failed save's abandoned writes are over by now
        _lingering.pop().release(show=False)
    held, _held_unraisable = _HeldReports().hold(), []
    try:
        yield held
    except BaseException:
        _failed_saves = True  # its abandoned writes' callbacks raise at random later
        _held_unraisable = None
        if held.path is None:  # not sent to a file: shown as they came
            held.release()
        raise
    held.release()
    unraisable, _held_unraisable = _held_unraisable, None
    for report in unraisable:
        sys.unraisablehook(report)
