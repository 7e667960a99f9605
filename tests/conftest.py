"""Test set-up: eight CPU devices in this process (two in the scripts it starts:
helpers.SCRIPT_DEVICES), tiny IDX data.

    python -m pytest -q              # the suite
    python -m pytest -q -m perf      # the speed-sensitive checks only (page-fault counts,
                                     # compiled-HLO text): deselected by default (pyproject.toml)
    python -m pytest -q -m ""        # everything

Expensive runs (a script's training run, a shared tiny training) are module-scoped fixtures of
the test modules that read them: they run when a test first asks for them, in the order pytest
collects the tests. Helpers are plain functions in helpers.py.
"""

import os
import shutil
import sys
import tempfile

# Must happen before jax is imported anywhere: the sharding tests compare 8 devices with 1.
# Much of the suite's time is XLA compiling tiny programs: LLVM's cheapest code generation
# and XLA's older elemental emitters for fusions (FAST_COMPILE) compile them faster and compute
# the same operations (no fast-math at any level). pytest -n N runs N processes, one a core, so
# each computes on one thread (ONE_THREAD), where XLA's thread pool in each would make them
# contend for the same cores.
# Both may sum in another order than a user's build, so a test that compares rounding with a
# user's build runs in a process of its own without them (OPTIMISED, set by that test).
from helpers import FAST_COMPILE, ONE_THREAD, OPTIMISED  # noqa: E402

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8" +
                           ("" if os.environ.get(OPTIMISED) else
                            f" {FAST_COMPILE} {ONE_THREAD}")).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402
from helpers import REPO, synthetic_images, write_idx_dataset  # noqa: E402

sys.path.insert(0, REPO)
_own_cache = None


def pytest_configure(config):
    """Many tests compile the same train step: they (and the scripts they start) share compiled
    programs through JAX's persistent compilation cache, a fresh one for each test session
    unless JAX_COMPILATION_CACHE_DIR names one (JAX reads it when it first compiles)."""
    global _own_cache
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        _own_cache = tempfile.mkdtemp(prefix="jaxgen-xla-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = _own_cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_unconfigure(config):
    if _own_cache:
        shutil.rmtree(_own_cache, ignore_errors=True)


@pytest.fixture
def idx_dir(tmp_path):
    return write_idx_dataset(str(tmp_path / "idx"))


@pytest.fixture(scope="session")
def tiny_images():
    return synthetic_images(64)[0][..., None]
