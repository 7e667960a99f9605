import os

import numpy as np
import pytest
from helpers import synthetic_images, write_idx, write_idx_dataset

from jaxgen import data
from jaxgen.errors import JaxgenError


def test_idx_round_trip_plain_and_gzip(tmp_path):
    images, labels = synthetic_images(5)
    for compress in (False, True):
        path = write_idx(str(tmp_path / f"img{compress}"), images, compress)
        np.testing.assert_array_equal(data.read_idx(path), images)


def test_load_idx_split_gives_nhwc_uint8_and_labels(idx_dir):
    ds = data.load_dataset("fashion_mnist", "train", idx_dir)
    assert ds.images.shape == (64, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.shape == (64,) and ds.labels.dtype == np.int32
    assert ds.class_names[9] == "Ankle boot"
    assert len(data.load_dataset("mnist", "test", idx_dir)) == 32


def test_bad_magic_number_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x0c\x03" + b"\x00" * 20)
    with pytest.raises(JaxgenError, match="bad magic number") as e:
        data.read_idx(str(path))
    assert str(path) in str(e.value)


def test_truncated_file_names_the_file_and_the_sizes(tmp_path):
    images, _ = synthetic_images(4)
    path = write_idx(str(tmp_path / "x"), images)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(JaxgenError, match=r"x is truncated.*3136 bytes"):
        data.read_idx(path)


def test_corrupt_gzip_body_names_the_file(tmp_path):
    images, _ = synthetic_images(50)
    path = write_idx(str(tmp_path / "x"), images, compress=True)
    raw = bytearray(open(path, "rb").read())
    raw[40:60] = b"\xff" * 20  # inside the deflate stream
    open(path, "wb").write(bytes(raw))
    with pytest.raises(JaxgenError, match="x.gz cannot be read"):
        data.read_idx(path)


def test_truncated_gzip_names_the_file(tmp_path):
    images, _ = synthetic_images(50)
    path = write_idx(str(tmp_path / "x"), images, compress=True)
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])
    with pytest.raises(JaxgenError, match="x.gz cannot be read"):
        data.read_idx(path)


def test_missing_file_is_named(tmp_path):
    d = write_idx_dataset(str(tmp_path / "idx"))
    os.remove(os.path.join(d, "train-labels-idx1-ubyte.gz"))
    with pytest.raises(JaxgenError, match="train-labels-idx1-ubyte.*is missing"):
        data.load_dataset("mnist", "train", d)


def test_images_and_labels_of_different_counts(tmp_path):
    d = write_idx_dataset(str(tmp_path / "idx"))
    write_idx(os.path.join(d, "train-labels-idx1-ubyte"), np.zeros(7, np.uint8), compress=True)
    with pytest.raises(JaxgenError, match="64 images but .* 7 labels"):
        data.load_dataset("mnist", "train", d)


def test_labels_file_given_as_images_is_rejected(tmp_path):
    d = write_idx_dataset(str(tmp_path / "idx"))
    write_idx(os.path.join(d, "train-images-idx3-ubyte"), np.zeros(64, np.uint8), compress=True)
    with pytest.raises(JaxgenError, match="not .*images"):
        data.load_dataset("mnist", "train", d)


def test_unknown_dataset():
    with pytest.raises(JaxgenError, match="unknown dataset 'cifar'.*fashion_mnist, mnist"):
        data.load_dataset("cifar")


def test_tfds_path_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load_dataset("mnist", "train")
    assert ds.images.shape == (12, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.shape == (12,) and ds.labels.max() < 10


def test_tfds_without_network_fails_fast_and_points_at_data_dir(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    downloads = []

    def fake_load(name, download=True, **kwargs):
        downloads.append(download)
        raise AssertionError(f"Dataset {name}: could not find data")

    monkeypatch.setattr(tfds, "load", fake_load)
    probed = []
    monkeypatch.setattr(data, "_reachable", lambda url, **kw: probed.append(url) or False)
    with pytest.raises(JaxgenError, match="cannot reach storage.googleapis.com.*--data-dir"):
        data.load_dataset("mnist", "train")
    assert downloads == [False]  # never started the download that would retry for minutes
    assert probed == ["https://storage.googleapis.com/cvdf-datasets/mnist/"]


def test_reachability_probe_uses_the_url_scheme_port(monkeypatch):
    calls = []

    def fake_connect(address, timeout):
        calls.append(address)
        raise OSError("unreachable")

    monkeypatch.setattr(data.socket, "create_connection", fake_connect)
    assert not data._reachable(data.DATASETS["fashion_mnist"].download_url)
    assert not data._reachable(data.DATASETS["mnist"].download_url)
    assert calls == [("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80),
                     ("storage.googleapis.com", 443)]
