"""experiments/kl/data_size.py: the KL question's claims against the training-set size."""

import csv
import json
import os

import numpy as np
import pytest
from helpers import REPO, is_png, run_in_process, write_idx_dataset

TINY = ("--batch-size", 16, "--hidden", 16, "--latent-dim", 3, "--iwae-k", 4, "--log-every", 50,
        "--keep-checkpoints", 1)


@pytest.fixture
def experiments_on_path(monkeypatch):
    # as `python experiments/kl/..`: the study's scripts import each other
    monkeypatch.syspath_prepend(os.path.join(REPO, "experiments", "kl"))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data_size")
    data_dir = write_idx_dataset(str(directory / "idx"), n_train=64, n_test=40)
    workdir = directory / "study"
    args = ("--data-dir", data_dir, "--workdir", workdir, "--sizes", "16,64", "--num-seeds", 2,
            "--points", "0:0.1", "--seed", 3, "--epochs", 2, "--gap-every", 1, "--nn-samples", 8,
            "--num-samples", 60, "--eval-images", 16, *TINY)
    return data_dir, workdir, args


def test_every_run_trains_as_many_steps_and_is_measured(study, experiments_on_path, capsys):
    data_dir, workdir, args = study
    code, out, err = run_in_process("kl/data_size.py", *args, capsys=capsys)
    assert code == 0, err[-3000:]
    rows = list(csv.DictReader(open(workdir / "data_size_runs.csv")))
    assert {(int(r["n"]), float(r["beta"]), float(r["sigma"]), int(r["seed"])) for r in rows} \
        == {(n, 0, 0.1, k) for n in (16, 64) for k in (3, 4)} and len(rows) == 4
    # the same number of steps whatever n: 16 images repeated 4 times are an epoch of 64
    assert {int(r["steps"]) for r in rows} == {2 * 64 // 16}
    for row in rows:
        for column in ("rate", "mi", "probe_acc", "mse_train", "mse_test", "mse_gap",
                       "iwae_gap", "nearer_train", "nearer_train_se", "null_nearer_train"):
            assert np.isfinite(float(row[column])), column
        assert 0 <= float(row["null_nearer_train"]) <= 1
        # each point's two seeds trained as one ensemble, each run measured in its own folder
        run = (workdir / "runs" / f"n{row['n']}_beta{float(row['beta']):g}_"
               f"sigma{float(row['sigma']):g}" / f"run{int(row['seed']) - 3}")
        history = json.load(open(run / "gap_history.json"))
        assert [h["epoch"] for h in history] == [1, 2]
        distances = np.load(run / "nn_distances.npz")
        assert distances["d_train"].shape == (8,) and distances["null_train"].shape == (8,)
    for n in (16, 64):  # the runs of an ensemble are different runs
        first, second = ([r for r in rows if int(r["n"]) == n and int(r["seed"]) == k][0]
                         for k in (3, 4))
        assert first["mse_train"] != second["mse_train"] and first["mi"] != second["mi"]
    table = open(workdir / "data_size.md").read()
    assert "Command: `python" in table and " ± " in table
    for name in ("claim1_latent", "claim2_overfitting", "claim3_samples", "nn_distances",
                 "gap_over_training"):
        assert is_png(workdir / f"{name}.png"), name

    # The same command again trains and measures nothing: every run is complete.
    code, out, err = run_in_process("kl/data_size.py", *args, capsys=capsys)
    assert code == 0, err[-3000:]
    assert "Avg one epoch time" not in out and "Evaluating on" not in out
    assert out.count("Claims measurements of epoch 2 read from") == 4


def test_training_sets_are_nested_prefixes_of_one_permutation(experiments_on_path):
    import data_size as study

    from jaxgen.data import Dataset

    images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1) * np.ones((1, 28, 28, 1),
                                                                            np.uint8)
    train = Dataset("mnist", "train", images, np.arange(100, dtype=np.int32) % 10, ())
    order = np.random.RandomState(study.SUBSET_SEED).permutation(100)
    small, large = (set(study.subset(train, order, n).images[:, 0, 0, 0]) for n in (10, 40))
    assert len(small) == 10 and len(large) == 40 and small < large
    assert len(study.repeated(study.subset(train, order, 30).images, 100)) == 90


@pytest.mark.parametrize("flags, named", [
    (("--points", "0:0"), "--points"),
    (("--points", "0:0.1,0:0.1"), "--points"),
    (("--points", "1"), "--points"),
    (("--sizes", "1,10"), "--sizes"),
    (("--part", "3/2"), "--part"),
    (("--sizes", "100"), "--sizes"),  # more than the 64 training images
    (("--sizes", "24"), "--sizes"),  # 64 is not a multiple: fewer steps than the others
    (("--sizes", "16", "--nn-samples", "40"), "--nn-samples"),  # no test images left as references
    (("--likelihood", "bernoulli"), "--likelihood"),
])
def test_bad_input_is_one_error_line_and_nothing_written(flags, named, study,
                                                         experiments_on_path, tmp_path, capsys):
    data_dir, _, _ = study
    workdir = tmp_path / "w"
    code, _, err = run_in_process("kl/data_size.py", "--data-dir", data_dir, "--workdir",
                                  workdir, "--batch-size", 16, *flags,
                                  capsys=capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert named in lines[0], lines
    assert not workdir.exists()
