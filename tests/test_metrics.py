"""Sample-quality metrics: the scores against closed forms, and evaluation end to end."""

import errno
import json
import os
import runpy
import sys

import numpy as np
import pytest
from helpers import (
    WIDTH,
    classifier_flags,
    curve_pixels,
    failing_writes,
    is_png,
    run_in_process,
    script,
    tensorboard_events,
    write_idx_dataset,
)

from jaxgen import metrics
from jaxgen.errors import JaxgenError
from jaxgen.metrics import scores
from jaxgen.runs.evaluate import HISTORY_FILE, EvaluateEvery, evaluate_run

TINY_FLAGS = classifier_flags()


# ------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = np.random.RandomState(0).normal(size=(400, 16)) @ np.diag(np.arange(1, 17))
    assert metrics.frechet_distance_of_features(features, features) == pytest.approx(0,
                                                                                     abs=1e-8)


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.RandomState(1)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((m1 - m2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert metrics.frechet_distance(m1, np.diag(s1), m2, np.diag(s2)) == pytest.approx(expected,
                                                                                      rel=1e-10)
    # The same pair in a rotated basis: the distance does not depend on the basis.
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    rotated = metrics.frechet_distance(q @ m1, q @ np.diag(s1) @ q.T, q @ m2,
                                       q @ np.diag(s2) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-9)


def test_trace_sqrt_product_of_non_commuting_2x2_matches_closed_form():
    # For 2x2 M with non-negative eigenvalues, tr(M^1/2) = sqrt(tr M + 2 sqrt(det M)).
    s1 = np.array([[2.0, 0.8], [0.8, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    m = s1 @ s2
    expected = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    assert metrics.trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-12)
    assert metrics.trace_sqrt_product(s2, s1) == pytest.approx(expected, rel=1e-12)


def test_trace_sqrt_product_of_singular_covariances():
    # rank-1 S1: tr((S1 S2)^1/2) = sqrt(4 * 1) = 2; tiny negative eigenvalues are clipped.
    s1 = np.diag([4.0, 0.0, -1e-18])
    s2 = np.diag([1.0, 9.0, 5.0])
    assert metrics.trace_sqrt_product(s1, s2) == pytest.approx(2.0, rel=1e-12)


def test_fid_of_samples_approaches_the_closed_form():
    rng = np.random.RandomState(2)
    a = rng.normal(0.0, 1.0, size=(20000, 3))
    b = rng.normal(0.5, 2.0, size=(20000, 3))
    expected = 3 * 0.5 ** 2 + 3 * (1 + 4 - 2 * 2)
    assert metrics.frechet_distance_of_features(a, b) == pytest.approx(expected, rel=0.03)


def test_too_few_samples_for_the_covariance_is_refused():
    with pytest.raises(JaxgenError, match="too few for 8-dimensional features.*at least 9"):
        metrics.gaussian_stats(np.zeros((8, 8)))
    metrics.gaussian_stats(np.random.RandomState(0).normal(size=(9, 8)))


# ------------------------------------------------------------------ score, coverage


def one_hot(classes, num_classes=10):
    return np.eye(num_classes)[np.asarray(classes)]


def test_score_of_confident_evenly_spread_predictions_is_the_class_count():
    assert metrics.inception_score(one_hot(np.arange(100) % 10)) == pytest.approx(10)
    assert metrics.inception_score(one_hot(np.arange(60) % 4, 4)) == pytest.approx(4)


def test_score_of_a_single_class_or_of_unsure_predictions_is_one():
    assert metrics.inception_score(one_hot([3] * 50)) == pytest.approx(1)
    assert metrics.inception_score(np.full((50, 10), 0.1)) == pytest.approx(1)


def test_score_grows_with_confidence():
    classes = np.arange(100) % 10
    soft = [metrics.inception_score(0.9 ** t * np.full((100, 10), 0.1)
                                    + (1 - 0.9 ** t) * one_hot(classes)) for t in (1, 5, 20)]
    assert 1 < soft[0] < soft[1] < soft[2] < 10


def test_coverage_counts_the_classes_hit_and_their_imbalance():
    probs = one_hot([0, 0, 1, 3], 5) * 0.6 + 0.08  # argmax: 0, 0, 1, 3
    covered, kl = metrics.class_coverage(probs)
    share = np.array([0.5, 0.25, 0.25])
    assert covered == 3
    assert kl == pytest.approx(np.sum(share * np.log(share * 5)))
    assert metrics.class_coverage(one_hot(np.arange(30) % 10)) == (10, pytest.approx(0))
    assert metrics.class_coverage(one_hot([7] * 30)) == (1, pytest.approx(np.log(10)))


# ------------------------------------------------------------------- precision, recall


def test_knn_radii_match_brute_force_in_any_chunking():
    x = np.random.RandomState(3).normal(size=(57, 5))
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    expected = np.sort(d2, axis=1)[:, 3]  # column 0 is the point itself
    for chunk in (1, 7, 1000):
        np.testing.assert_allclose(scores.knn_radii(x, k=3, chunk=chunk), expected, rtol=1e-9)


def test_precision_and_recall_of_a_set_against_itself_are_one():
    x = np.random.RandomState(4).normal(size=(300, 8))
    assert metrics.precision_recall(x, x, k=3, chunk=64) == (1.0, 1.0)
    # Duplicates (a collapsed set) too: the rounding noise of identical points is removed.
    same = np.repeat(x[:5] * 1e3, 20, axis=0)
    assert metrics.precision_recall(same, same, k=3) == (1.0, 1.0)


def test_precision_and_recall_of_far_apart_sets_are_zero():
    rng = np.random.RandomState(5)
    real, fake = rng.normal(size=(200, 8)), rng.normal(size=(150, 8)) + 100
    assert metrics.precision_recall(real, fake, k=3, chunk=32) == (0.0, 0.0)


def test_precision_counts_the_samples_on_the_real_manifold():
    rng = np.random.RandomState(6)
    # A 30x30 grid of the unit square: each ball (radius: the grid step) covers its cells.
    real = np.stack(np.meshgrid(*[np.linspace(0, 1, 30)] * 2), -1).reshape(-1, 2)
    inside = rng.uniform(0.2, 0.8, size=(120, 2))
    outside = rng.uniform(0, 1, size=(40, 2)) + 50
    precision, recall = metrics.precision_recall(real, np.concatenate([inside, outside]), k=3,
                                                 chunk=50)
    assert precision == pytest.approx(120 / 160)
    assert 0 < recall < 1  # the samples cover the middle of the square only


# ---------------------------------------------------------------- end to end, tiny runs


def _main(name, *args):
    """A script's __main__ in this process (compiled programs are shared); its exit code."""
    argv, sys.argv = sys.argv, [script(name), *map(str, args)]
    try:
        runpy.run_path(script(name), run_name="__main__")
        return 0
    except SystemExit as e:
        return e.code
    finally:
        sys.argv = argv


NUM = 16  # samples per evaluation: more than the 8 features, at most the 32 test images


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_images):
    """A tiny classifier (its script), then a 2-epoch tiny GAN (the loop, one device, as
    test_train_loop.py's) scored after epoch 2 by the epoch hook, on tiny IDX data."""
    import jax

    from jaxgen import parallel
    from jaxgen.train import loop
    from jaxgen.train.gan import GANConfig, GANTask

    root = tmp_path_factory.mktemp("eval")
    data_dir = write_idx_dataset(str(root / "idx"))  # its training images are tiny_images
    classifier, gan = root / "classifier", root / "gan"
    assert _main("train_classifier.py", "--data-dir", data_dir, "--workdir", classifier,
                 "--epochs", 3, *TINY_FLAGS) == 0
    hook = EvaluateEvery(str(classifier), 2, NUM, data_dir, dataset="mnist")
    loop.train(GANTask(GANConfig(epochs=2, batch_size=16, log_every=2, width=WIDTH)),
               tiny_images, str(gan),
               parallel.make_mesh(jax.devices()[:1]), log=lambda _: None, epoch_hooks=[hook])
    return data_dir, classifier, gan


def _sane(scores_: dict) -> None:
    assert set(scores_) == set(metrics.METRICS)
    assert scores_["fid"] >= 0 and np.isfinite(scores_["fid"])
    assert 1 <= scores_["inception_score"] <= 10
    assert 1 <= scores_["classes_covered"] <= 10 and 0 <= scores_["class_kl"] <= np.log(10)
    assert 0 <= scores_["precision"] <= 1 and 0 <= scores_["recall"] <= 1


def test_evaluate_script_writes_scores_and_floor(runs, capsys):
    data_dir, classifier, gan = runs
    code, out, err = run_in_process("evaluate.py", "--workdir", gan, "--classifier", classifier,
                                    "--num-samples", NUM, "--data-dir", data_dir, capsys=capsys)
    assert code == 0, err[-3000:]
    result = json.load(open(gan / "eval.json"))
    for key in metrics.METRICS + ("num_samples", "floor", "classifier", "model"):
        assert key in result, key
    _sane({k: result[k] for k in metrics.METRICS})
    _sane(result["floor"])
    # Real test images against real training images beat a GAN trained for 8 steps.
    assert result["floor"]["fid"] < result["fid"]
    assert result["num_samples"] == NUM and result["model"]["checkpoint_epoch"] == 2
    report = json.load(open(classifier / "classifier.json"))
    assert result["classifier"]["path"] == str(classifier)
    assert result["classifier"]["dataset"] == "mnist"
    assert result["classifier"]["test_accuracy"] == pytest.approx(report["test_accuracy"])
    assert "real-data floor" in out and f"test accuracy {report['test_accuracy']:.4f}" in out
    assert f"{result['fid']:.3f}" in out and f"{result['floor']['fid']:.3f}" in out


def test_evaluation_during_training_writes_history_and_curve(runs):
    _, _, gan = runs
    rows = [json.loads(line) for line in open(gan / HISTORY_FILE)]
    assert [r["epoch"] for r in rows] == [2]  # every 2 epochs: not after epoch 1
    _sane({k: rows[0][k] for k in metrics.METRICS})
    _sane(rows[0]["floor"])
    # One evaluation: one point of each curve, FID (blue) and the real-data floor (orange).
    drawn = curve_pixels(gan / "GAN_fid.png")
    assert is_png(gan / "GAN_fid.png") and drawn["blue"] > 0 and drawn["orange"] > 0, drawn


def test_tensorboard_shows_each_evaluation(runs):
    _, _, gan = runs
    rows = [json.loads(line) for line in open(gan / HISTORY_FILE)]
    events = tensorboard_events(gan)
    for key in metrics.METRICS:  # evaluated after epoch 2 of 4 steps: at step 8
        assert events[f"eval/{key}"] == [(8, pytest.approx(rows[0][key], rel=1e-6))]
        assert events[f"eval_floor/{key}"] == [(8, pytest.approx(rows[0]["floor"][key],
                                                                  rel=1e-6))]


def test_evaluation_hook_matches_evaluate_run_and_keeps_each_epoch_once(runs, tmp_path):
    """The hook's floor (seed 0) is evaluate_run's; an epoch evaluated again (a resumed run)
    replaces its row, and the rows of earlier epochs stay. The hook writes into its own
    directory here, leaving the shared run's history as the fixture made it."""
    import jax

    from jaxgen.runs.restore import restore_run

    data_dir, classifier, gan = runs
    one = jax.devices()[:1]  # the fixture's device: its programs are compiled already
    task, state = restore_run(str(gan), devices=one)
    hook = EvaluateEvery(str(classifier), 1, NUM, data_dir, dataset="mnist")
    hook(task, state, 1, str(tmp_path))  # (the state of epoch 2: only the bookkeeping matters)
    hook(task, state, 2, str(tmp_path))
    hook(task, state, 2, str(tmp_path))
    rows = [json.loads(line) for line in open(tmp_path / HISTORY_FILE)]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["fid"] == rows[1]["fid"]  # one fixed key: the same samples each time
    result = evaluate_run(str(gan), str(classifier), NUM, data_dir, devices=one)
    for key in metrics.METRICS:
        assert result["floor"][key] == pytest.approx(rows[1]["floor"][key], rel=1e-5)


def test_gan_collection_trains_scores_and_tabulates_each_gan_once(runs, tmp_path, capsys):
    """gan_collection.py: a row per GAN from its own eval.json and history (label accuracy for
    the conditional ones, infoGAN's codes matched to classes), the floor row, the last epoch's
    grids side by side, with --eval-every every GAN's FID over the epochs; a rerun trains and
    scores nothing again, and a rerun that asks for other scores scores again without
    training."""
    import csv

    from PIL import Image

    data_dir, classifier, _ = runs
    out = tmp_path / "collection"
    names = ("GAN+EMA", "infoGAN")  # an unconditional and a conditional GAN
    dirs = {"GAN+EMA": "gan_ema", "infoGAN": "infogan"}
    flags = ("--gan-types", ",".join(names), "--epochs", 1, "--batch-size", 16, "--width", WIDTH,
             "--data-dir", data_dir, "--classifier", classifier, "--workdir", out,
             "--eval-every", 1)
    code, log, err = run_in_process("gan_collection.py", *flags, "--num-samples", NUM,
                                    capsys=capsys)
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "collection.csv")))
    assert [r["gan"] for r in rows] == list(names)
    for row, name in zip(rows, names):
        result = json.load(open(out / dirs[name] / "eval.json"))
        task = name.replace("+EMA", "")
        assert result["model"]["task"] == task and result["num_samples"] == NUM
        for key in metrics.METRICS:
            assert float(row[key]) == pytest.approx(result[key], rel=1e-3), key
        history = json.load(open(out / dirs[name] / f"{task}_history.json"))
        assert float(row["seconds_per_epoch"]) == pytest.approx(history["per_epoch_time"][0],
                                                                rel=1e-3)
        config = json.load(open(out / dirs[name] / "config.json"))
        assert config["config"]["g_ema"] == (0.999 if name == "GAN+EMA" else 0.0)
        if task == "GAN":
            assert row["label_accuracy"] == "" and "label_accuracy" not in result
        else:
            assert float(row["label_accuracy"]) == pytest.approx(result["label_accuracy"],
                                                                 rel=1e-3)
            assert 0 <= result["label_accuracy"] <= 1
            assert 0 <= result["floor"]["label_accuracy"] <= 1
    mapping = json.load(open(out / "infogan" / "eval.json"))["code_to_class"]
    assert len(mapping) == 10 and all(0 <= c < 10 for c in mapping)  # every code drawn
    assert "code_to_class" not in json.load(open(out / "gan_ema" / "eval.json"))
    table = open(out / "collection.md").read()
    assert "| real test images (floor) |" in table and "| infoGAN |" in table
    assert "| GAN+EMA |" in table and f"G and D at {WIDTH:g} times the reference's" in table
    assert f"{result['floor']['fid']:.2f}" in table or f"{result['floor']['fid']:.4g}" in table
    curves = list(csv.DictReader(open(out / "collection_fid.csv")))
    for name in names:  # each GAN's FID after its one epoch, as its own hook wrote it
        (scored,) = [json.loads(line) for line in open(out / dirs[name] / "eval_history.jsonl")]
        (row,) = [r for r in curves if r["gan"] == name]
        assert int(row["epoch"]) == scored["epoch"] == 1
        assert float(row["fid"]) == pytest.approx(scored["fid"], rel=1e-6)
    assert is_png(out / "collection_fid.png")
    machine = json.load(open(out / "infogan" / "machine.json"))["machine"]
    assert "cpu device(s)" in machine and f"per epoch on {machine}." in " ".join(
        open(out / "collection.md").read().split())
    picture = np.asarray(Image.open(out / "collection.png").convert("L"))
    assert picture.shape[1] > picture.shape[0]  # two panels side by side
    assert is_png(out / "collection.png") and picture.std() > 10

    scored = {n: os.path.getmtime(out / n / "eval.json") for n in ("gan_ema", "infogan")}
    code, log, err = run_in_process("gan_collection.py", *flags, "--num-samples", NUM,
                                    capsys=capsys)
    assert code == 0, err
    assert "trained and scored already" in log and "Epoch:" not in log
    assert {n: os.path.getmtime(out / n / "eval.json") for n in scored} == scored

    # Runs trained elsewhere, brought back without their checkpoints: tabulated, not trained.
    import shutil

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(out, elsewhere, ignore=shutil.ignore_patterns("checkpoints", "collection*"))
    moved = tuple(elsewhere if f == out else f for f in flags)
    code, log, err = run_in_process("gan_collection.py", *moved, "--num-samples", NUM,
                                    "--tabulate-only", capsys=capsys)
    assert code == 0, err
    assert "Epoch:" not in log and "trained and scored already" in log
    assert {n: os.path.getmtime(elsewhere / n / "eval.json") for n in scored} == {
        n: os.path.getmtime(out / n / "eval.json") for n in scored}  # copied, not scored anew
    assert list(csv.DictReader(open(elsewhere / "collection.csv"))) == rows
    assert (list(csv.DictReader(open(elsewhere / "collection_fid.csv")))
            == list(csv.DictReader(open(out / "collection_fid.csv"))))
    missing = ("--gan-types", "GAN+EMA,WGAN", *moved[2:])
    code, _, err = run_in_process("gan_collection.py", *missing, "--num-samples", NUM,
                                  "--tabulate-only", capsys=capsys)
    assert code == 2 and "--tabulate-only: " in err and "holds no scores of WGAN" in err, err
    assert not (elsewhere / "wgan" / "checkpoints").exists()

    one = ("--gan-types", "GAN+EMA", *flags[2:])  # one GAN alone, scored anew
    code, log, err = run_in_process("gan_collection.py", *one, "--num-samples", NUM - 4,
                                    capsys=capsys)
    assert code == 0, err
    assert "nothing to train" in log and "Epoch:" not in log
    assert json.load(open(out / "gan_ema" / "eval.json"))["num_samples"] == NUM - 4
    assert os.path.getmtime(out / "infogan" / "eval.json") == scored["infogan"]  # not asked


def test_the_scores_of_several_runs_are_their_mean_and_standard_deviation():
    runs = [{"fid": 10.0, "precision": 0.5}, {"fid": 12.0, "precision": 0.7},
            {"fid": 14.0, "precision": 0.6, "recall": 0.1}]
    summary = metrics.summarise_runs(runs)
    assert summary == {"fid": pytest.approx(12.0), "precision": pytest.approx(0.6),
                       "std": {"fid": pytest.approx(2.0), "precision": pytest.approx(0.1)}}
    table = metrics.format_table({**summary, "classes_covered": 9.5, "inception_score": 2.0,
                                  "class_kl": 0.1, "recall": 0.2,
                                  "std": {**summary["std"], "classes_covered": 0.5,
                                          "inception_score": 0.25, "class_kl": 0.0,
                                          "recall": 0.05},
                                  "floor": {k: 1 for k in metrics.METRICS}}, name="GAN")
    assert "12.000 ± 2.000" in table and "9.5 ± 0.5/10" in table


def test_a_seed_ensemble_is_scored_run_by_run(runs, tiny_images, tmp_path, capsys):
    """An ensemble of two runs (seeds 3, 4) evaluated while it trains (a TensorBoard curve
    per run) and by gan_collection.py --num-seeds 2, which finds it trained and scores each
    run: the scores of run 1 are those of its samples drawn alone (sample_images(run=1)),
    the table gives mean ± std, the CSV a row per run."""
    import csv

    import jax

    from jaxgen import parallel
    from jaxgen.metrics import Evaluator
    from jaxgen.runs.evaluate import load_classifier
    from jaxgen.runs.restore import sample_images
    from jaxgen.train import loop
    from jaxgen.train.gan import GANConfig, GANTask

    data_dir, classifier, _ = runs
    out = tmp_path / "collection"
    hook = EvaluateEvery(str(classifier), 2, NUM, data_dir, dataset="mnist")
    config = GANConfig(epochs=2, batch_size=16, log_every=2, seed=3, num_seeds=2,
                       width=WIDTH)
    loop.train(GANTask(config), tiny_images, str(out / "gan"),
               parallel.make_mesh(jax.devices()[:1]), log=lambda _: None, epoch_hooks=[hook])
    row = json.loads(open(out / "gan" / HISTORY_FILE).read())
    assert [r["run"] for r in row["runs"]] == [0, 1] and set(row["std"]) >= {"fid", "recall"}
    for r in range(2):
        fid = tensorboard_events(out / "gan", f"run{r}")["eval/fid"]
        assert fid == [(8, pytest.approx(row["runs"][r]["fid"], rel=1e-6))]
    assert row["fid"] == pytest.approx(np.mean([r["fid"] for r in row["runs"]]))

    code, log, err = run_in_process(
        "gan_collection.py", "--gan-types", "GAN", "--epochs", 2, "--batch-size", 16,
        "--width", WIDTH, "--seed", 3, "--num-seeds", 2, "--data-dir", data_dir,
        "--classifier", classifier,
        "--workdir", out, "--num-samples", NUM, capsys=capsys)
    assert code == 0, err
    assert "nothing to train" in log and "Epoch:" not in log
    result = json.load(open(out / "gan" / "eval.json"))
    assert result["model"]["num_runs"] == 2
    assert [(r["run"], r["seed"]) for r in result["runs"]] == [(0, 3), (1, 4)]
    evaluator = Evaluator(load_classifier(str(classifier)), "mnist", NUM, data_dir, 3)
    alone = evaluator.evaluate(sample_images(str(out / "gan"), NUM, seed=3, run=1))
    for key in metrics.METRICS:
        assert result["runs"][1][key] == pytest.approx(alone[key], rel=1e-4, abs=1e-6), key
    assert result["runs"][0]["fid"] != result["runs"][1]["fid"]
    rows = list(csv.DictReader(open(out / "collection.csv")))
    assert [(r["gan"], r["run"], r["seed"]) for r in rows] == [("GAN", "0", "3"),
                                                               ("GAN", "1", "4")]
    for r, csv_row in enumerate(rows):
        assert float(csv_row["fid"]) == pytest.approx(result["runs"][r]["fid"], rel=1e-3)
    table = open(out / "collection.md").read()
    assert "2 runs each (seeds 3..4" in table
    assert f"{result['fid']:.2f} ± " in table or f"{result['fid']:.4g} ± " in table


# ------------------------------------------------------------------------ bad input


def _error(capsys, name, *args):
    code, out, err = run_in_process(name, *args, capsys=capsys)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    return lines[-1]


def _untouched(path):
    return os.path.getmtime(path) if os.path.exists(path) else None


def test_classifier_of_another_dataset_is_refused(runs, tmp_path, capsys):
    data_dir, _, gan = runs
    fashion = tmp_path / "fashion"
    assert _main("train_classifier.py", "--dataset", "fashion_mnist", "--data-dir", data_dir,
                 "--workdir", fashion, "--epochs", 1, *TINY_FLAGS) == 0
    before = _untouched(gan / "eval.json")
    line = _error(capsys, "evaluate.py", "--workdir", gan, "--classifier", fashion,
                  "--num-samples", NUM, "--data-dir", data_dir)
    assert f"--classifier {fashion} was trained on fashion_mnist, but the model was trained " \
           "on mnist" in line
    assert _untouched(gan / "eval.json") == before
    line = _error(capsys, "gan_mnist.py", "--data-dir", data_dir, "--workdir", tmp_path / "g",
                  "--eval-every", 1, "--classifier", fashion, "--eval-samples", NUM)
    assert "was trained on fashion_mnist, but the model was trained on mnist" in line
    assert not (tmp_path / "g").exists()


def test_missing_model_checkpoint(runs, tmp_path, capsys):
    data_dir, classifier, _ = runs
    line = _error(capsys, "evaluate.py", "--workdir", tmp_path, "--classifier", classifier,
                  "--num-samples", NUM, "--data-dir", data_dir)
    assert f"--workdir {tmp_path} holds no checkpoints" in line
    assert os.listdir(tmp_path) == []


def test_missing_classifier_checkpoint(runs, tmp_path, capsys):
    data_dir, _, gan = runs
    before = _untouched(gan / "eval.json")
    line = _error(capsys, "evaluate.py", "--workdir", gan, "--classifier", tmp_path / "none",
                  "--num-samples", NUM, "--data-dir", data_dir)
    assert f"--classifier {tmp_path / 'none'} holds no checkpoints" in line
    assert "experiments/train_classifier.py" in line
    assert _untouched(gan / "eval.json") == before


def test_a_gan_as_classifier_is_refused(runs, capsys):
    data_dir, _, gan = runs
    line = _error(capsys, "evaluate.py", "--workdir", gan, "--classifier", gan,
                  "--num-samples", NUM, "--data-dir", data_dir)
    assert "holds a GAN run, not a classifier" in line


@pytest.mark.parametrize("num,message", [
    (8, "--num-samples 8 is too few for the classifier's 8-dimensional features: their "
        "covariance would be singular; pass --num-samples of at least 9."),
    (33, "--num-samples 33 is more than the 32 images of mnist's smaller split"),
])
def test_sample_count_outside_what_the_scores_need(num, message, runs, capsys):
    data_dir, classifier, gan = runs
    before = _untouched(gan / "eval.json")
    line = _error(capsys, "evaluate.py", "--workdir", gan, "--classifier", classifier,
                  "--num-samples", num, "--data-dir", data_dir)
    assert message in line
    assert _untouched(gan / "eval.json") == before


def test_evaluate_on_a_full_disk_is_one_line_and_keeps_eval_json(runs, tmp_path, capsys,
                                                                 monkeypatch):
    """Every score computed, then eval.json cannot be written: one error line naming it, exit 2,
    no traceback, the previous eval.json as it was and no temporary file beside it."""
    import shutil

    data_dir, classifier, gan = runs
    workdir = shutil.copytree(gan, tmp_path / "gan")
    (workdir / "eval.json").write_text('{"fid": "an earlier evaluation"}')
    before = (workdir / "eval.json").read_bytes()
    failing_writes(monkeypatch, errno.ENOSPC, lambda path: ".eval.json." in str(path))
    code, _, err = run_in_process("evaluate.py", "--workdir", workdir, "--classifier",
                                  classifier, "--num-samples", NUM, "--data-dir", data_dir,
                                  capsys=capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith(f"error: cannot write {workdir / 'eval.json'}: no space left")
    assert "Traceback" not in err
    assert (workdir / "eval.json").read_bytes() == before
    assert not [n for n in os.listdir(workdir) if n.endswith(".tmp")]


def test_too_many_eval_samples_are_refused_before_an_epoch_is_trained(runs, tmp_path, capsys):
    """The evaluation's real images are counted at start-up: the run stops before it trains
    (and before its workdir exists), not after its first epoch."""
    data_dir, classifier, _ = runs
    line = _error(capsys, "gan_mnist.py", "--data-dir", data_dir, "--workdir", tmp_path / "w",
                  "--batch-size", 16, "--epochs", 1, "--eval-every", 1, "--classifier",
                  classifier, "--eval-samples", 33)
    assert line == ("error: --eval-samples 33 is more than the 32 images of mnist's smaller "
                    "split, which the real-data floor needs; pass at most 32.")
    assert not (tmp_path / "w").exists()


def test_gan_script_passes_the_evaluation_hook_to_the_loop(runs, tmp_path, capsys,
                                                           monkeypatch):
    from jaxgen.train import loop

    data_dir, classifier, _ = runs
    calls = []
    monkeypatch.setattr(loop, "train", lambda *args, **kwargs: calls.append(kwargs))
    for eval_flags in ((), ("--eval-every", 3, "--classifier", classifier, "--eval-samples",
                            NUM)):
        code, _, err = run_in_process("gan_mnist.py", "--data-dir", data_dir, "--workdir",
                                      tmp_path / "g", "--seed", 4, *eval_flags, capsys=capsys)
        assert code == 0, err
    assert calls[0]["epoch_hooks"] == []
    (hook,) = calls[1]["epoch_hooks"]
    assert isinstance(hook, EvaluateEvery)
    assert (hook.classifier_dir, hook.every, hook.num_samples, hook.data_dir, hook.seed) == (
        str(classifier), 3, NUM, data_dir, 4)


def test_eval_every_needs_a_classifier(tmp_path, capsys):
    line = _error(capsys, "gan_mnist.py", "--workdir", tmp_path / "g", "--eval-every", 2)
    assert "--eval-every needs --classifier DIR" in line
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("flags,named", [
    (("--classifier", "somewhere"), "--classifier only takes effect with --eval-every N"),
    (("--eval-samples", 500), "--eval-samples only takes effect with --eval-every N"),
    (("--classifier", "somewhere", "--eval-samples", 500),
     "--classifier and --eval-samples only take effect with --eval-every N"),
])
def test_evaluation_flags_without_eval_every_are_refused(flags, named, tmp_path, capsys):
    line = _error(capsys, "gan_mnist.py", "--workdir", tmp_path / "g", *flags)
    assert named in line
    assert not (tmp_path / "g").exists()


def test_too_few_eval_samples_stop_training_before_it_starts(runs, tmp_path, capsys):
    data_dir, classifier, _ = runs
    line = _error(capsys, "gan_mnist.py", "--data-dir", data_dir, "--workdir", tmp_path / "g",
                  "--eval-every", 1, "--classifier", classifier, "--eval-samples", 5)
    assert "--eval-samples 5 is too few" in line and "at least 9" in line
    assert not (tmp_path / "g").exists()


def test_the_collections_fid_curves_give_each_run_and_say_what_they_leave_out(tmp_path):
    """collection_fid.csv has a row per GAN, evaluation and run (an ensemble's from its runs'
    scores, each with its seed); the figure leaves out, and says so, a GAN scored after other
    epochs; without any scores over epochs nothing is written, and the log says why."""
    import csv
    import importlib.util

    from jaxgen.train.gan import GANConfig

    spec = importlib.util.spec_from_file_location("gan_collection", script("gan_collection.py"))
    collection = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collection)

    def row(epoch, fids):
        return {"epoch": epoch, "fid": float(np.mean(fids)), "floor": {"fid": 0.5},
                "runs": [{"run": r, "fid": f} for r, f in enumerate(fids)]}

    histories = {"GAN": [row(2, [30.0, 34.0]), row(4, [20.0, 22.0])],
                 "WGAN": [row(2, [50.0, 40.0]), row(4, [25.0, 27.0])],
                 "EBGAN": [row(3, [90.0, 80.0])]}
    base = GANConfig(num_seeds=2, seed=7, epochs=4)
    options = collection.CollectionOptions(classifier="c", num_samples=100, eval_every=2)
    logs = []
    collection.write_fid_curves(histories, str(tmp_path), base, options, logs.append)
    rows = list(csv.DictReader(open(tmp_path / "collection_fid.csv")))
    assert [(r["gan"], int(r["epoch"]), int(r["run"]), int(r["seed"]), float(r["fid"]))
            for r in rows][:4] == [("GAN", 2, 0, 7, 30.0), ("GAN", 2, 1, 8, 34.0),
                                   ("GAN", 4, 0, 7, 20.0), ("GAN", 4, 1, 8, 22.0)]
    assert len(rows) == 10 and {float(r["floor_fid"]) for r in rows} == {0.5}
    assert is_png(tmp_path / "collection_fid.png")
    assert any("leaves out EBGAN" in line for line in logs), logs

    empty = tmp_path / "empty"
    empty.mkdir()
    collection.write_fid_curves({}, str(empty), base, options, logs.append)
    assert not list(empty.iterdir()) and "no GAN has scores over its epochs" in logs[-1]
