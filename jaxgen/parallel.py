"""Devices, the data-parallel mesh, and multi-host start-up.

Sharding is declared here once: a 1-D mesh with axis ``"data"``; batches are split along it,
everything else (dataset, parameters, optimiser states) is replicated. Train steps are written for
the global batch and jitted with these shardings, so XLA inserts the gradient and BatchNorm
all-reduces: N devices compute exactly the update one device would (up to summation order).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import warnings
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgen import rendezvous
from jaxgen.errors import JaxgenError

DATA_AXIS = "data"
RUNS_AXIS = "runs"  # a seed ensemble's runs, sharded over rows of devices (runs_mesh)
ACCELERATORS = ("auto", "cpu", "gpu", "tpu")


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None, timeout: int = 300) -> None:
    """Starts JAX's multi-process runtime when a multi-host run is asked for; else does nothing.

    Asked for by the arguments (``coordinator_address="HOST:PORT"`` of process 0 with
    ``num_processes`` and ``process_id``), by ``coordinator_address="auto"`` on clusters JAX
    detects by itself (SLURM, Open MPI, Cloud TPU pods), or by JAX's own ``JAX_COORDINATOR_ADDRESS``
    environment variable. Every process runs the same program; process 0 writes logs and pictures.
    With an explicit address, the processes first check in with process 0
    (:func:`jaxgen.rendezvous.roll_call`), so one that never comes is a clear error.
    """
    if coordinator_address is None and "JAX_COORDINATOR_ADDRESS" not in os.environ:
        if num_processes not in (None, 1) or process_id is not None:
            raise JaxgenError("--num-processes/--process-id need --coordinator-address "
                              "HOST:PORT (the address of process 0), or auto on a cluster.")
        return
    if coordinator_address not in (None, "auto"):
        if num_processes is None or process_id is None:
            raise JaxgenError("--coordinator-address HOST:PORT needs --num-processes N and "
                              "--process-id I (0 on the coordinator's host).")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise JaxgenError(f"--process-id must be in 0..{num_processes - 1} for "
                              f"--num-processes {num_processes}, got {process_id}.")
    if coordinator_address not in (None, "auto"):  # a missing process: one clear error
        rendezvous.roll_call(coordinator_address, num_processes, process_id, timeout)
    # CPU processes exchange collectives through gloo; harmless where another backend is used.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address == "auto":
        coordinator_address = None
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id,
                                   initialization_timeout=timeout)
    except (RuntimeError, ValueError) as e:
        reason = str(e).splitlines()[0][:200]
        raise JaxgenError(f"could not join the multi-host run ({reason}); check "
                          "--coordinator-address, --num-processes and --process-id, and that "
                          "process 0 is running.") from None


# XLA:CPU hands dots, convolutions and some elementwise work to YNNPACK by default. On the CPUs
# jaxgen is measured on, YNNPACK's convolutions and elementwise kernels are slower than XLA's own,
# so YNNPACK keeps the dots only; the maths is the same. benchmarks/gan_step.py --xla-defaults
# prints both; docs/performance.md has the figures. An XLA_FLAGS entry of the user's for the same
# option wins.
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}


def compiler_options(mesh: Mesh) -> Optional[dict]:
    """The XLA options jaxgen compiles its heavy programs with (train steps, the VAE's test
    evaluation, the classifier's feature pass) on ``mesh``: ``CPU_COMPILER_OPTIONS`` on CPU unless
    XLA_FLAGS sets them, none on accelerators."""
    if mesh.devices.flat[0].platform != "cpu":
        return None
    flags = os.environ.get("XLA_FLAGS", "")
    return {k: v for k, v in CPU_COMPILER_OPTIONS.items() if f"--{k}=" not in flags} or None


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


def _platforms_present() -> list[str]:
    present = []
    for platform in ("cpu", "gpu", "tpu"):
        try:
            present.append(f"{platform} ({len(jax.devices(platform))} devices)")
        except RuntimeError:
            pass
    return present


def select_devices(accelerator: str = "auto") -> list:
    """All devices (of every process) of the requested platform; 'auto' takes JAX's default."""
    if accelerator not in ACCELERATORS:
        raise JaxgenError(f"unknown accelerator {accelerator!r}; choose one of "
                          f"{', '.join(ACCELERATORS)}.")
    if accelerator == "auto":
        return jax.devices()
    try:
        return jax.devices(accelerator)
    except RuntimeError:
        raise JaxgenError(
            f"--accelerator {accelerator} was asked for but this machine has no {accelerator} "
            f"devices; present: {', '.join(_platforms_present())}. Pass one of those, or auto."
        ) from None


def make_mesh(devices: Optional[Sequence] = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), (DATA_AXIS,))


def runs_mesh(mesh: Mesh, num_runs: int) -> Optional[Mesh]:
    """A seed ensemble's runs sharded over ``mesh``'s devices: the 2-D mesh (:data:`RUNS_AXIS`,
    :data:`DATA_AXIS`) of the same devices in the same order, each row of devices holding its
    share of the runs and splitting each run's batch over the row, when the device count
    divides ``num_runs`` (one row per device) or ``num_runs`` divides it (one row per run);
    else None, and each run is data-parallel over every device."""
    n = mesh.size
    rows = n if num_runs % n == 0 else num_runs if n % num_runs == 0 else 1
    if num_runs == 1 or rows == 1:
        return None
    return Mesh(mesh.devices.reshape(rows, n // rows), (RUNS_AXIS, DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(x: jax.Array) -> jax.Array:
    """Inside a train step: split the leading (batch) axis over the mesh's devices.

    Needs the mesh in context (``jax.set_mesh``), which the training loop provides.
    """
    return jax.lax.with_sharding_constraint(x, P(DATA_AXIS))


def _data_axis_in_context() -> bool:
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and DATA_AXIS in mesh.axis_names


def spread_batch(x: jax.Array) -> jax.Array:
    """Inside a jitted function: work without cross-sample terms (drawing samples, a batch
    statistic that XLA all-reduces) split along the leading axis over the devices of the mesh
    in context (``jax.set_mesh``), so that each device computes its share instead of all of it;
    ``x`` unchanged when no mesh is in context. :func:`gather_batch` brings the result back."""
    return jax.lax.with_sharding_constraint(x, P(DATA_AXIS)) if _data_axis_in_context() else x


def gather_batch(x: jax.Array) -> jax.Array:
    """Inside a jitted function: ``x`` whole on every device of the mesh in context (a result
    the host reads, e.g. of :func:`spread_batch`'s work); unchanged when no mesh is in context."""
    return jax.lax.with_sharding_constraint(x, P()) if _data_axis_in_context() else x


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    n = mesh.size
    if batch_size % n:
        lower, upper = (batch_size // n) * n, (batch_size // n + 1) * n
        suggestion = f"{lower} or {upper}" if lower else f"{upper}"
        raise JaxgenError(f"--batch-size {batch_size} is not divisible by the {n} devices; "
                          f"pass a multiple of {n}, e.g. {suggestion}.")


def device_memory_limit(mesh: Mesh) -> Optional[int]:
    """Bytes one device of ``mesh`` can hold: an accelerator's memory limit; on CPU the host's
    physical memory shared by this process's devices; None where neither is known."""
    device = next(d for d in mesh.devices.flat if d.process_index == jax.process_index())
    try:
        stats = device.memory_stats() or {}
    except Exception:  # a backend without memory statistics
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform != "cpu":
        return None
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return None
    local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    return physical // max(local, 1)


def put_replicated(tree, mesh: Mesh):
    """Host arrays (identical on every process) -> global arrays replicated over the mesh."""
    sharding = replicated(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def to_host(tree):
    """Replicated global arrays -> numpy, on any process (reads the local copy)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def is_main_process() -> bool:
    return jax.process_index() == 0


def describe_mesh(mesh) -> str:
    """E.g. "8 cpu device(s) on 1 process(es), platform cpu"."""
    kinds = sorted({d.device_kind for d in mesh.devices.flat})
    return (f"{mesh.size} {'/'.join(kinds)} device(s) on {jax.process_count()} process(es), "
            f"platform {mesh.devices.flat[0].platform}")


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
