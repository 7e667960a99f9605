"""Datasets: MNIST and Fashion-MNIST as uint8 arrays, from TFDS or from a directory of IDX files.

Both sources give the same thing: images of shape (N, 28, 28, 1), dtype uint8, and int32 labels.
Conversion to floats happens on the device, inside the jitted train step, so the whole training
set can live on the accelerator as 47 MB of uint8 (see ``jaxgen.train.loop``).

The IDX format (LeCun et al.) is a big-endian header: two zero bytes, a type code (0x08 = uint8),
the number of dimensions, one uint32 per dimension, then the data.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import socket
import struct
import zlib
from typing import Optional
from urllib.parse import urlparse

import numpy as np

from jaxgen.errors import JaxgenError


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    class_names: tuple[str, ...]
    download_url: str  # where TFDS fetches the raw files from; probed before a download


DATASETS = {
    "mnist": DatasetInfo(
        name="mnist",
        class_names=tuple(str(d) for d in range(10)),
        download_url="https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        download_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
}

IMAGE_SHAPE = (28, 28, 1)

# Split name -> (images file, labels file), without the optional ".gz".
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UINT8 = 0x08


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One split of a dataset, in host memory."""

    name: str
    split: str
    images: np.ndarray  # (N, 28, 28, 1) uint8
    labels: np.ndarray  # (N,) int32
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise JaxgenError(
            f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}.")
    return DATASETS[name]


def load_dataset(name: str, split: str = "train", data_dir: Optional[str] = None) -> Dataset:
    """Loads one split of ``name``: from IDX files in ``data_dir`` if given, else through TFDS."""
    info = dataset_info(name)
    if split not in IDX_FILES:
        raise JaxgenError(f"unknown split {split!r}; choose 'train' or 'test'.")
    if data_dir is not None:
        images, labels = load_idx_split(data_dir, split)
    else:
        images, labels = _load_tfds_split(info, split)
    return Dataset(name=name, split=split, images=images, labels=labels,
                   class_names=info.class_names)


# --------------------------------------------------------------------------------------- IDX

def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file (optionally gzip-compressed) into a uint8 array, validating the header."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise JaxgenError(f"IDX file {path} does not exist; check --data-dir.") from None
    except (OSError, EOFError, zlib.error) as e:  # a truncated or corrupt .gz lands here
        raise JaxgenError(
            f"IDX file {path} cannot be read ({e}); download it again.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UINT8 or raw[3] == 0:
        raise JaxgenError(
            f"IDX file {path} has a bad magic number (expected 0x000008NN for uint8 data); "
            "it is not an IDX file or it is corrupt: download it again.")
    ndim = raw[3]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise JaxgenError(f"IDX file {path} is truncated inside its header; download it again.")
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    expected = int(np.prod(shape))
    got = len(raw) - header_len
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise JaxgenError(
            f"IDX file {path} is {what}: its header promises {expected} bytes of data for shape "
            f"{shape}, it holds {got}; download it again.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)


def _find_idx(data_dir: str, stem: str) -> str:
    for candidate in (stem, stem + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.exists(path):
            return path
    raise JaxgenError(
        f"{os.path.join(data_dir, stem)}[.gz] is missing; --data-dir must hold the four "
        "standard IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz).")


def load_idx_split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads the images and labels of one split from ``data_dir`` and checks they agree."""
    if not os.path.isdir(data_dir):
        raise JaxgenError(f"--data-dir {data_dir} is not a directory; pass the directory that "
                          "holds the IDX files.")
    image_stem, label_stem = IDX_FILES[split]
    image_path = _find_idx(data_dir, image_stem)
    label_path = _find_idx(data_dir, label_stem)
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE[:2]:
        raise JaxgenError(f"IDX file {image_path} holds an array of shape {images.shape}, not "
                          "(N, 28, 28) images; it is not an image file of this dataset.")
    if labels.ndim != 1:
        raise JaxgenError(f"IDX file {label_path} holds an array of shape {labels.shape}, not "
                          "(N,) labels; it is not a label file.")
    if len(images) != len(labels):
        raise JaxgenError(f"{image_path} holds {len(images)} images but {label_path} holds "
                          f"{len(labels)} labels; the files come from different downloads.")
    if len(images) == 0:
        raise JaxgenError(f"IDX file {image_path} holds no images; download it again.")
    if labels.max() > 9:
        raise JaxgenError(f"IDX file {label_path} holds label {labels.max()}, outside 0-9; it "
                          "is not a label file of this dataset.")
    return images[..., None].copy(), labels.astype(np.int32)


# -------------------------------------------------------------------------------------- TFDS

def _reachable(url: str, timeout: float = 5.0) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_tfds_split(info: DatasetInfo, split: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds  # imported here: TensorFlow takes seconds to import

    def load(download: bool):
        return tfds.load(info.name, split=split, as_supervised=True, download=download)

    try:
        ds = load(download=False)
    except Exception:  # not prepared yet: TFDS raises AssertionError or DatasetNotFoundError
        # TFDS retries a failed download for minutes; find out in seconds whether it can work.
        if not _reachable(info.download_url):
            raise JaxgenError(
                f"TFDS has no prepared copy of {info.name} and cannot reach "
                f"{urlparse(info.download_url).hostname} to download it; download the four IDX "
                "files on a machine with network access and pass their directory with "
                "--data-dir DIR."
            ) from None
        ds = load(download=True)
    chunks = list(tfds.as_numpy(ds.batch(10_000)))
    images = np.concatenate([c[0] for c in chunks]).astype(np.uint8).reshape((-1,) + IMAGE_SHAPE)
    labels = np.concatenate([c[1] for c in chunks]).astype(np.int32)
    return images, labels
