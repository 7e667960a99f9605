"""Test set-up: eight CPU devices in this process (and in the scripts it starts), tiny IDX data."""

import gzip
import os
import struct
import sys

# Must happen before jax is imported anywhere: the sharding tests compare 8 devices with 1.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Many tests compile the same train step: share compiled programs between them (and with the
# scripts they start) through JAX's persistent compilation cache, fresh for each test session.
import tempfile  # noqa: E402

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxgen-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def write_idx(path: str, array: np.ndarray, compress: bool = False) -> str:
    """Writes ``array`` (uint8) as an IDX file, as the MNIST distribution does."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    if compress:
        path += ".gz"
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        with open(path, "wb") as f:
            f.write(payload)
    return path


def synthetic_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blobs whose position depends on the label: learnable, cheap, deterministic."""
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, 10, n).astype(np.uint8)
    yy, xx = np.mgrid[:28, :28]
    images = np.zeros((n, 28, 28), np.float32)
    for i, label in enumerate(labels):
        cy, cx = 7 + 14 * (label // 5) * 0.9, 4 + 5 * (label % 5)
        images[i] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18.0)
    images = images * 255 + rng.uniform(0, 20, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_idx_dataset(directory: str, n_train: int = 64, n_test: int = 32,
                      compress: bool = True) -> str:
    os.makedirs(directory, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_images(n, seed)
        write_idx(os.path.join(directory, f"{split}-images-idx3-ubyte"), images, compress)
        write_idx(os.path.join(directory, f"{split}-labels-idx1-ubyte"), labels, compress)
    return directory


@pytest.fixture
def idx_dir(tmp_path):
    return write_idx_dataset(str(tmp_path / "idx"))


@pytest.fixture(scope="session")
def tiny_images():
    return synthetic_images(64)[0][..., None]


def _background_runs(item) -> list[str]:
    """The background runs (cli_helpers.background_run) that test ``item`` reads."""
    from cli_helpers import JOBS

    return [name for name in getattr(item, "fixturenames", ()) if name in JOBS]


def pytest_collection_modifyitems(session, config, items):
    """Tests that read a background run go last (in their order), so that the run has the time
    of the in-process tests to finish."""
    items[:] = ([item for item in items if not _background_runs(item)]
                + [item for item in items if _background_runs(item)])


@pytest.fixture(scope="session", autouse=True)
def _start_background_runs(request, tmp_path_factory):
    """Starts, when the session starts, every background run that the selected tests read, in
    the order they read them (pytest_sessionfinish stops what is left)."""
    import cli_helpers

    for item in request.session.items:
        for name in _background_runs(item):
            cli_helpers.start(name, tmp_path_factory)


def pytest_sessionfinish(session, exitstatus):
    import shutil

    if "cli_helpers" in sys.modules:  # background runs still going (a failed or interrupted run)
        sys.modules["cli_helpers"].stop_background_runs()

    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
    if os.path.basename(cache).startswith("jaxgen-xla-cache-"):
        shutil.rmtree(cache, ignore_errors=True)


def host_leaves(tree) -> list:
    """The leaves of a (possibly sharded) pytree as host numpy arrays, for exact comparisons."""
    import jax

    from jaxgen import parallel

    return [np.asarray(x) for x in jax.tree.leaves(parallel.to_host(tree))]
