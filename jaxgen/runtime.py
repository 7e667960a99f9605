"""Process-wide settings jaxgen's scripts apply at start-up (:func:`jaxgen.cli.run`): glibc's
malloc kept from handing XLA:CPU's scratch memory back to the kernel, and JAX's persistent
compilation cache, with its unreadable entries replaced. Importing this module changes nothing;
each setting is applied by calling its function.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import warnings
from typing import Optional

import jax

# The glibc malloc settings of reuse_host_memory: (mallopt parameter of <malloc.h>, the
# environment variable that sets it at a process's start, value).
HOST_MEMORY_SETTINGS = ((-8, "MALLOC_ARENA_MAX", 1),  # M_ARENA_MAX: one arena
                        (-4, "MALLOC_MMAP_MAX_", 0),  # M_MMAP_MAX: no mmap
                        (-1, "MALLOC_TRIM_THRESHOLD_", 2**31 - 1))  # M_TRIM_THRESHOLD: no trim
_MALLOC_ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_",
               "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def host_memory_environment() -> dict:
    """The environment variables that give a new process (PyTorch, say) the malloc settings
    of :func:`reuse_host_memory` from its start."""
    return {name: str(value) for _, name, value in HOST_MEMORY_SETTINGS}


def _xla_threads_started() -> bool:
    """Whether XLA's runtime has started threads in this process: they are named ``tf_...``
    (``tf_XLAEigen``, the CPU backend's pool) in ``/proc/self/task/*/comm``. JAX has no public
    query for a started backend; False where ``/proc`` is not there."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return False
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                if f.read().startswith("tf_"):
                    return True
        except OSError:  # the thread ended meanwhile
            continue
    return False


def reuse_host_memory() -> bool:
    """Makes glibc's malloc keep freed memory for reuse instead of handing it back to the kernel;
    returns whether it did. jaxgen's scripts and benchmarks call it first thing.

    XLA:CPU allocates each run's scratch memory afresh and frees it at the end. glibc serves
    blocks that large from fresh ``mmap`` pages and unmaps them on free, so every step
    page-faults its whole scratch memory back in. With one malloc arena, no ``mmap`` and no
    trimming, each step reuses the memory the previous one freed; results are unchanged. The
    process keeps its peak heap instead of returning memory after a large free.
    ``benchmarks/gan_step.py`` prints the faults per step and the speed with and without it
    (figures: docs/performance.md).

    It must run before JAX starts its backend (the first array or device query): the threads
    that allocate take their arena then. It does nothing, and returns False, if the backend has
    started (its threads run), if the C library is not glibc, or if the environment already
    sets glibc's malloc options (``MALLOC_ARENA_MAX`` and the like, or ``glibc.malloc``
    tunables), which win.
    """
    if any(k in os.environ for k in _MALLOC_ENV) or \
            "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if _xla_threads_started():
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library the process runs on
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and macOS lack these mallopts
            return False
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, _, value in HOST_MEMORY_SETTINGS)


CACHE_HINT = "$XDG_CACHE_HOME/jaxgen/xla, or ~/.cache/jaxgen/xla"


def default_compilation_cache() -> str:
    """Where the scripts keep compiled programs when JAX_COMPILATION_CACHE_DIR is not set."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "jaxgen", "xla")


def use_compilation_cache(enabled: bool = True) -> Optional[str]:
    """Turns JAX's persistent compilation cache on (JAX_COMPILATION_CACHE_DIR, or
    :func:`default_compilation_cache`) or off, before anything is compiled; returns its
    directory (None when off)."""
    if not enabled:
        jax.config.update("jax_compilation_cache_dir", None)
        return None
    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_compilation_cache()
    jax.config.update("jax_compilation_cache_dir", directory)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        # the small programs too (init, shuffle, sampling): together they take seconds
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return directory


# JAX's warning when an entry of its persistent cache cannot be read (it then compiles anew),
# and the name of an entry: "<module name>-<64 hex digits>-cache".
_UNREADABLE_ENTRY = re.compile(r"Error reading persistent compilation cache entry for '([^']+)'")
_ENTRY = re.compile(r"(.+)-[0-9a-f]{64}-cache")


@contextlib.contextmanager
def repairing_compilation_cache():
    """Within it, a compiled program that JAX's persistent cache holds but cannot read (a
    corrupt entry) is removed when JAX reports it, so the compilation that follows stores a good
    one: JAX's cache keeps the first entry of a key and never replaces it, so a corrupt entry
    would otherwise be read, warned about and compiled again on every run. One line says so, in
    place of JAX's warning. The scripts run their main within it (``jaxgen.cli.run``)."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        found = _UNREADABLE_ENTRY.search(str(message))
        directory = jax.config.jax_compilation_cache_dir
        if not (found and directory):
            return shown(message, category, filename, lineno, file, line)
        removed = _remove_entries(directory, found.group(1))
        print(f"warning: the compilation cache {directory} held an unreadable copy of "
              f"{found.group(1)}; {'it was removed and ' if removed else ''}the program was "
              "compiled again.", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _remove_entries(directory: str, module: str) -> int:
    """Removes the cache entries of the compiled module ``module`` (each of its programs
    compiles again once); how many."""
    removed = 0
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            entry = _ENTRY.fullmatch(name)
            if entry and entry.group(1) == module:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(directory, name))
                    removed += 1
    return removed
