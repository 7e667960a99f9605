"""A run's working directory: where its checkpoints live, checks that it can be written, the
lock that keeps a second run out of it, and the one way every output file is written
(:func:`write_atomically`)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import tempfile
import time
import uuid

from jaxgen.errors import JaxgenError


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, "checkpoints")


def check_workdir(workdir: str) -> None:
    """Fails, creating nothing, if ``workdir`` could not be created or written."""
    if not workdir:
        raise JaxgenError("--workdir is empty; pass a directory, or leave the flag out for the "
                          "default.")
    path = os.path.abspath(workdir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        raise JaxgenError(f"--workdir {workdir} is not writable ({path} is not a writable "
                          "directory); pass a directory you can write to.")


def ensure_writable(workdir: str) -> str:
    """``workdir`` as an absolute path, created if needed and checked to be writable."""
    workdir = os.path.abspath(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir):
            pass
    except OSError as e:
        raise JaxgenError(f"--workdir {workdir} is not writable ({e.strerror}); pass a directory "
                          "you can write to.") from None
    return workdir


LOCK_FILE = ".lock"


class WorkdirLock:
    """Holds ``workdir`` for one run: an exclusive ``flock`` on ``WORKDIR/.lock`` that the
    operating system releases when the process ends, however it ends (so ``kill -9`` leaves no
    stale lock). A second run on the same workdir is refused with the holder's host, PID and
    start time, which the holder writes into the file. Reading a run (sampling, evaluation)
    takes no lock. Use as a context manager; on several hosts only process 0 takes it."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.enabled = enabled
        self._file = None

    def __enter__(self) -> "WorkdirLock":
        if not self.enabled:
            return self
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise JaxgenError(f"--workdir {os.path.dirname(self.path)} is in use by a run of "
                              f"{holder}; wait for it to end, or pass another --workdir.") from None
        f.seek(0)
        f.truncate()
        f.write(f"host {socket.gethostname()}, PID {os.getpid()}, since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the lock
            self._file = None


# Why a write can fail that the user can fix: a full disk or quota, a read-only filesystem, a
# directory they may not write.
_UNWRITABLE = {errno.ENOSPC: "no space left on the device",
               errno.EDQUOT: "the disk quota is used up",
               errno.EROFS: "the filesystem is read-only",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied"}


def unwritable(path: str, error: OSError, kept: str) -> Exception:
    """``error``, from writing ``path``, as the one-line ``JaxgenError`` a user can act on when
    it is a full disk, a read-only filesystem or a missing permission (``kept`` says what was
    left as it was); any other error as it is."""
    if error.errno not in _UNWRITABLE:
        return error
    return JaxgenError(f"cannot write {path}: {_UNWRITABLE[error.errno]}; {kept}. Free some "
                       "space or choose a writable directory, then rerun the same command.")


@contextlib.contextmanager
def write_atomically(path: str, mode: str = "w", newline=None):
    """``open(path, mode)`` for writing a whole file, as every output of jaxgen is written: into
    a temporary file in the same directory, renamed over ``path`` when the block ends. A reader
    never sees a partial file, and a failure leaves the previous file as it was and no temporary
    one. A full disk, a read-only filesystem or a directory without permission is one
    ``JaxgenError`` naming the path and the fix; other errors pass unchanged."""
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        # "x": a new file with the usual permissions (the umask's), never another's
        with open(tmp, mode.replace("w", "x"), newline=newline) as f:
            yield f
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise unwritable(path, e, "the previous file, if any, is intact") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):  # FileNotFoundError: it was never made
                os.unlink(tmp)
