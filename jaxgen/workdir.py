"""A run's working directory: where its checkpoints live, and checks that it can be written."""

from __future__ import annotations

import os
import tempfile

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
