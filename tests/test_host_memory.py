"""runtime.reuse_host_memory: XLA:CPU's per-run scratch memory is reused, not faulted back in.

Each case runs in its own process: malloc's settings are process-wide and must be made before
JAX starts its backend. The page-fault counts depend on the machine and its load: those tests
are marked perf and left out by default; run them with

    python -m pytest -q -m perf tests/test_host_memory.py
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A jitted program whose scratch memory (about 75 MB for a cumulative sum of 64 MB) is larger
# than any malloc arena but the main one can serve without mmap.
PROBE = r"""
import json, resource, sys
from jaxgen import runtime
applied = runtime.reuse_host_memory() if sys.argv[1] == "reuse" else None
import jax, jax.numpy as jnp

x = jnp.ones(2**24, jnp.float32)
step = jax.jit(lambda x: jnp.cumsum(x)[::4096]).lower(x).compile()
temp = step.memory_analysis().temp_size_in_bytes
warmup, runs = int(sys.argv[2]), 8
for _ in range(warmup):  # the heap settles at its working size
    y = step(x).block_until_ready()
faults = []
for _ in range(runs):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = step(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
late = runtime.reuse_host_memory()  # the backend has started: refused
print(json.dumps({"applied": applied, "late": late, "temp": temp, "faults": faults}))
"""


def _probe(mode: str, warmup: int = 2, **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environ.update(env, PYTHONPATH=ROOT, XLA_FLAGS="")
    proc = subprocess.run([sys.executable, "-c", PROBE, mode, str(warmup)], capture_output=True,
                          text=True, env=environ, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")


@LINUX_ONLY
def test_settings_are_applied_before_the_backend_starts_and_refused_after():
    result = _probe("reuse", warmup=0)
    assert result["applied"] is True
    assert result["late"] is False


@pytest.mark.perf
@LINUX_ONLY
def test_scratch_memory_is_reused_instead_of_faulted_in_every_run():
    default, reused = _probe("default"), _probe("reuse", warmup=24)
    pages = default["temp"] / 4096
    assert default["temp"] > 2**26
    # glibc's defaults: the scratch memory comes back as fresh pages in every run...
    assert min(default["faults"]) > 0.5 * pages, default
    # ...and after reuse_host_memory the program runs without faulting it in again (the heap
    # may still grow once or twice, depending on the order in which buffers are freed).
    assert reused["applied"] is True
    assert sorted(reused["faults"])[len(reused["faults"]) // 2] < 0.02 * pages, reused
    assert reused["late"] is False


def test_the_users_malloc_settings_win():
    result = _probe("reuse", MALLOC_ARENA_MAX="4")
    assert result["applied"] is False


@pytest.mark.perf
@LINUX_ONLY
def test_the_environment_version_gives_a_new_process_the_same_settings():
    """What the benchmark starts PyTorch with: the settings from the process's start."""
    from jaxgen import runtime

    result = _probe("default", warmup=24, **runtime.host_memory_environment())
    pages = result["temp"] / 4096
    assert sorted(result["faults"])[len(result["faults"]) // 2] < 0.02 * pages, result
