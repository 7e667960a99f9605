"""Helpers the tests share: tiny data, running the scripts, comparing GAN models, reading the
pictures the code writes. Plain functions; the fixtures are in conftest.py."""

import gzip
import math
import os
import re
import runpy
import socket
import struct
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# XLA's flags for its cheapest code generation and for one compute thread, which the suite
# runs with, and the variable that a test comparing rounding with a user's build sets in its
# own process (tests/conftest.py).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
ONE_THREAD = "--xla_cpu_multi_thread_eigen=false"
OPTIMISED = "JAXGEN_TEST_OPTIMISED_XLA"
# The tests' GANs: the reference's design at an eighth of its width (GANConfig.width, --width).
# Narrow networks step, save and restore far faster. Tests whose bounds were set for the
# reference's architecture (its shapes, the step against the reference's, eight devices against
# one, precision) keep the full width (docs/testing.md says which).
WIDTH = 0.125


# ----------------------------------------------------------------------------- data
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
    """IDX files of ``synthetic_images``: the training split from seed 0, the test split from
    seed 1."""
    os.makedirs(directory, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_images(n, seed)
        write_idx(os.path.join(directory, f"{split}-images-idx3-ubyte"), images, compress)
        write_idx(os.path.join(directory, f"{split}-labels-idx1-ubyte"), labels, compress)
    return directory


def host_leaves(tree) -> list:
    """The leaves of a (possibly sharded) pytree as host numpy arrays, for exact comparisons."""
    import jax

    from jaxgen import parallel

    return [np.asarray(x) for x in jax.tree.leaves(parallel.to_host(tree))]


# ----------------------------------------------------------------------------- scripts
def script(name: str) -> str:
    """The path of experiments/``name``, or of ``name`` if it names benchmarks/ itself."""
    return os.path.join(REPO, name if name.startswith("benchmarks/") else
                        os.path.join("experiments", name))


def _command(name: str, args) -> list:
    return [sys.executable, script(name), *map(str, args)]


# The simulated CPU devices of the scripts the tests start: several, so that every script's
# run is data-parallel and sharded as on a machine with several accelerators, and fewer than
# the test process's eight (whose comparisons of eight devices with one are in-process): each
# device computes the replicated parts of a step (the optimiser's update) in full, on the same
# two cores.
SCRIPT_DEVICES = 2


def xla_flags(devices: int) -> str:
    """The test session's XLA flags for a process of ``devices`` simulated CPU devices."""
    count = f"--xla_force_host_platform_device_count={devices}"
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_force_host_platform_device_count=" in flags:
        return re.sub(r"--xla_force_host_platform_device_count=\d+", count, flags)
    return f"{flags} {count}".strip()


def script_env(env=None) -> dict:
    """The environment of a script a test starts: the session's, on SCRIPT_DEVICES devices,
    with ``env`` over it."""
    return {**os.environ, "XLA_FLAGS": xla_flags(SCRIPT_DEVICES), **(env or {})}


def run_script(name: str, *args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Runs experiments/``name`` as a process, as a user does (on SCRIPT_DEVICES devices);
    waits for it."""
    return subprocess.run(_command(name, args), capture_output=True, text=True,
                          timeout=timeout, env=script_env(env), cwd=REPO)


class ScriptProcess:
    """experiments/``name`` started as a process that runs while the caller starts others (the
    processes of one jax.distributed run); its output goes to files, so no pipe fills up."""

    def __init__(self, name: str, *args, env=None):
        self._out = tempfile.TemporaryFile("w+")
        self._err = tempfile.TemporaryFile("w+")
        self.args = _command(name, args)
        self.proc = subprocess.Popen(self.args, stdout=self._out, stderr=self._err, text=True,
                                     env=script_env(env), cwd=REPO)

    def wait(self, timeout=600) -> subprocess.CompletedProcess:
        try:
            self.proc.wait(timeout)
        finally:
            self.kill()
        outputs = []
        for f in (self._out, self._err):
            f.seek(0)
            outputs.append(f.read())
            f.close()
        return subprocess.CompletedProcess(self.args, self.proc.returncode, *outputs)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_in_process(name: str, *args, capsys) -> tuple[int, str, str]:
    """Runs a script's ``__main__`` here (no interpreter start-up; the programs it compiles are
    shared with the tests): (exit code, stdout, stderr)."""
    argv = sys.argv
    sys.argv = [script(name), *map(str, args)]
    try:
        runpy.run_path(script(name), run_name="__main__")
        code = 0
    except SystemExit as e:
        if isinstance(e.code, str):  # sys.exit("error: ..."), as the interpreter prints it
            print(e.code, file=sys.stderr)
        code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- classifier
def classifier_config():
    """The tiny classifier of every test (test_classifier.py's and test_metrics.py's): one
    config, compiled once."""
    from jaxgen.train.classifier import ClassifierConfig

    return ClassifierConfig(epochs=3, batch_size=16, lr=3e-3, dropout=0.0, feature_dim=8,
                            log_every=4)


def classifier_flags() -> tuple:
    """The scripts' way to the same config (without --epochs)."""
    config = classifier_config()
    return ("--batch-size", config.batch_size, "--lr", config.lr, "--dropout", config.dropout,
            "--feature-dim", config.feature_dim)


# ----------------------------------------------------------------------------- GAN models
# A bias directly before a BatchNorm gets no gradient in exact arithmetic (the normalisation
# removes it); its computed gradient is rounding noise, which Adam divides by its own magnitude
# and turns into a step of up to +-lr.
BIASES_BEFORE_BATCHNORM = {
    "g": {"['Dense_0']['bias']", "['Dense_1']['bias']", "['ConvTranspose4x4Up_0']['bias']"},
    "d": {"['Conv_1']['bias']", "['Dense_0']['bias']"},
}

# Tolerances of assert_gan_models_close. Computations that differ only in rounding (1 vs 8
# devices, XLA:CPU's options, the plain transcription of the reference's step) stay about ten
# times within them; a missing or wrong update of either network exceeds them many times over
# (docs/testing.md gives the differences measured). Adam turns rounding noise in near-zero
# gradients into +-lr steps, so a few elements of a parameter may flip their step; a wrong
# update moves nearly all of them.
MAX_SHARE_MOVED_APART = 0.2
# The generator's tanh outputs, in [-1, 1].
G_OUTPUT_ATOL = 3e-2
# The discriminator's logits.
D_OUTPUT_ATOL = 2e-4


def assert_gan_models_close(a, b, *, lr: float, images, z_dim: int = 62, width: float = 1.0):
    """Two GAN models that one step took from the same model, batch and key, by computations
    that should be the same maths: compared as far as rounding lets them be.

    Every parameter moved by at most lr in each (Adam's first step is lr * g / (|g| + eps)),
    so they are at most 2 lr apart; all but a few elements moved the same way; and what the
    networks compute in training mode (BatchNorm on the batch, blind to the biases before it)
    agrees (networks of ``width``, GANConfig.width). Only one step: GAN training amplifies
    rounding differences from step to step (docs/testing.md, tolerances)."""
    import jax
    import jax.numpy as jnp

    from jaxgen.models.gan import Discriminator, Generator

    for net in ("g", "d"):
        for part in ("params", "batch_stats"):
            leaves_a = jax.tree_util.tree_leaves_with_path(getattr(getattr(a, net), part))
            leaves_b = jax.tree.leaves(getattr(getattr(b, net), part))
            for (path, x), y in zip(leaves_a, leaves_b):
                name = jax.tree_util.keystr(path)
                diff = np.abs(np.asarray(x) - np.asarray(y))
                assert diff.max() <= 2 * lr + 1e-4 * np.abs(y).max(), (net, name)
                if name in BIASES_BEFORE_BATCHNORM[net] or name.endswith("['mean']"):
                    continue  # those biases, and the running means that include them
                moved_apart = np.mean(diff > lr / 10)
                assert moved_apart < MAX_SHARE_MOVED_APART, (net, name, moved_apart)
    z = jax.random.uniform(jax.random.PRNGKey(123), (images.shape[0], z_dim))
    g_out = [Generator(width=width).apply({"params": m.g.params,
                                           "batch_stats": m.g.batch_stats}, z,
                                          train=True, mutable=["batch_stats"])[0] for m in (a, b)]
    np.testing.assert_allclose(g_out[0], g_out[1], rtol=0, atol=G_OUTPUT_ATOL)
    d_out = [Discriminator(width=width).apply({"params": m.d.params,
                                               "batch_stats": m.d.batch_stats},
                                              jnp.asarray(images), train=True,
                                              mutable=["batch_stats"])[0] for m in (a, b)]
    np.testing.assert_allclose(d_out[0], d_out[1], rtol=1e-4, atol=D_OUTPUT_ATOL)


# ----------------------------------------------------------------------------- pictures
def as_pixels(images) -> np.ndarray:
    """Images in [-1, 1] as the grey levels a picture of them holds: (N, H, W) uint8."""
    images = np.asarray(images, np.float64)
    if images.ndim == 4:
        assert images.shape[-1] == 1, images.shape
        images = images[..., 0]
    return np.clip(np.rint((images + 1) * 127.5), 0, 255).astype(np.uint8)


def grid_tiles(path, n: int, ncols: int, size: int = 28, pad: int = 2,
               scale: int = 2) -> np.ndarray:
    """The ``n`` images of a grid picture (jaxgen.viz.save_image_grid: ``ncols`` a row, ``pad``
    black pixels around each, every pixel drawn as a ``scale`` x ``scale`` block), as
    (n, size, size) grey levels. Asserts the layout: the blocks, the size, black gaps."""
    from PIL import Image

    picture = np.asarray(Image.open(path))
    assert picture.ndim == 2, f"{path} is not a greyscale picture"
    small = picture[::scale, ::scale]
    assert np.array_equal(picture, np.kron(small, np.ones((scale, scale), picture.dtype))), path
    nrows = math.ceil(n / ncols)
    assert small.shape == (nrows * (size + pad) + pad, ncols * (size + pad) + pad), small.shape
    tiles, gaps = [], np.ones(small.shape, bool)
    for k in range(n):
        top, left = pad + (k // ncols) * (size + pad), pad + (k % ncols) * (size + pad)
        tiles.append(small[top:top + size, left:left + size])
        gaps[top:top + size, left:left + size] = False
    assert not small[gaps].any(), f"{path}: the gaps between images are not black"
    return np.stack(tiles)


def curve_pixels(path) -> dict:
    """Pixels of a matplotlib figure in the hues of its first two default line colours (blue
    C0, orange C1). A legend entry alone draws about 35 of each; a curve of 8 points, hundreds."""
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    red, blue = rgb[..., 0], rgb[..., 2]
    return {"blue": int(np.sum(blue - red > 60)), "orange": int(np.sum(red - blue > 60))}


def tensorboard_events(workdir, run: str = "") -> dict:
    """{tag: [(step, value, or (height, width, decoded pixels) for an image)]} in file order,
    read by TensorFlow's own reader from every event file of a run's ``tensorboard/`` (of its
    ``tensorboard/<run>/``, a seed ensemble's run's)."""
    import glob
    import io

    import pytest
    from PIL import Image

    tf = pytest.importorskip("tensorflow")
    series = {}
    files = sorted(glob.glob(os.path.join(str(workdir), "tensorboard", run,
                                          "events.out.tfevents.*")))
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("image"):
                    pixels = np.asarray(Image.open(io.BytesIO(value.image.encoded_image_string)))
                    entry = (value.image.height, value.image.width, pixels)
                else:
                    entry = value.simple_value
                series.setdefault(value.tag, []).append((event.step, entry))
    return series


def is_png(path) -> bool:
    """Whether ``path`` is a complete, readable PNG file."""
    from PIL import Image

    with Image.open(path) as picture:
        if picture.format != "PNG":
            return False
        picture.load()  # decodes every row: a truncated file raises
    return True


# ----------------------------------------------------------------------------- failures

def failing_writes(monkeypatch, error_number, when=lambda path: True):
    """Makes jaxgen's writer fail as a full or read-only disk would, for the files ``when``
    picks: at the first write (ENOSPC) or at opening (the others)."""
    import builtins
    import errno

    from jaxgen import workdir

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])  # part of it reaches the disk, then it is full
            raise OSError(error_number, os.strerror(error_number))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *args, **kwargs):
        if "x" not in mode or not when(path):
            return builtins.open(path, mode, *args, **kwargs)
        if error_number != errno.ENOSPC:
            raise OSError(error_number, os.strerror(error_number), path)
        return Full(builtins.open(path, mode, *args, **kwargs))

    monkeypatch.setattr(workdir, "open", fake_open, raising=False)
