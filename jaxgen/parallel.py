"""Devices, the data-parallel mesh, and multi-host start-up.

Sharding is declared here once: a 1-D mesh with axis ``"data"``; batches are split along it,
everything else (dataset, parameters, optimiser states) is replicated. Train steps are written for
the global batch and jitted with these shardings, so XLA inserts the gradient and BatchNorm
all-reduces: N devices compute exactly the update one device would (up to summation order).
"""

from __future__ import annotations

import os
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
