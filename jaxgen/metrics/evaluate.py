"""Scoring a generative model's samples against real images, beside the real-data floor.

The reference is N training images (a fixed random subset); a model's N samples are scored
against it. The floor scores N *test* images against the same reference: what a generator that
draws fresh images from the data distribution itself would get at this N. The Fréchet distance
and precision/recall are biased at finite N, so only numbers at the same N compare, and a model
is judged by its distance to the floor, not to 0.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import jax
import numpy as np

from jaxgen import data, parallel, viz
from jaxgen.errors import JaxgenError
from jaxgen.metrics import scores
from jaxgen.metrics.features import (FeatureExtractor, classifier_meta, load_classifier,
                                     newest_meta, quantize, train_classifier_hint)
from jaxgen.train.loop import named_key

METRICS = ("fid", "inception_score", "classes_covered", "class_kl", "precision", "recall")
EVAL_FILE = "eval.json"
HISTORY_FILE = "eval_history.jsonl"


def sample_metrics(features: np.ndarray, probs: np.ndarray, reference_features: np.ndarray,
                   k: int = 3, flag: str = "--num-samples") -> dict:
    """Every score of one set of images (their classifier features and probabilities) against
    the reference features of real images."""
    covered, class_kl = scores.class_coverage(probs)
    precision, recall = scores.precision_recall(reference_features, features, k=k)
    return {"fid": scores.frechet_distance_of_features(features, reference_features, flag),
            "inception_score": scores.inception_score(probs),
            "classes_covered": covered, "class_kl": class_kl,
            "precision": precision, "recall": recall}


def check_num_samples(num: int, feature_dim: int, flag: str = "--num-samples") -> None:
    if not isinstance(num, int) or num < 1:
        raise JaxgenError(f"{flag} must be a positive integer, got {num}.")
    if num < feature_dim + 1:
        raise JaxgenError(f"{flag} {num} is too few for the classifier's {feature_dim}-"
                          "dimensional features: their covariance would be singular; pass "
                          f"{flag} of at least {feature_dim + 1}.")


def check_dataset(classifier_dataset: str, dataset: str, classifier_dir: str) -> None:
    if classifier_dataset != dataset:
        raise JaxgenError(f"--classifier {classifier_dir} was trained on {classifier_dataset}, "
                          f"but the model was trained on {dataset}; pass a classifier trained on "
                          f"{dataset} ({train_classifier_hint(classifier_dir, dataset)}).")


class Evaluator:
    """Scores sets of N images with a classifier against N real training images of ``dataset``;
    ``floor`` holds the scores of N real test images, ``test_accuracy`` the classifier's on the
    whole test set."""

    def __init__(self, extractor: FeatureExtractor, dataset: str, num_samples: int,
                 data_dir: Optional[str] = None, seed: int = 0, k: int = 3,
                 flag: str = "--num-samples"):
        check_dataset(extractor.dataset, dataset, extractor.directory)
        check_num_samples(num_samples, extractor.feature_dim, flag)
        self.extractor, self.num_samples, self.k, self.flag = extractor, num_samples, k, flag
        test = data.load_dataset(dataset, "test", data_dir)
        train = data.load_dataset(dataset, "train", data_dir)
        smallest = min(len(test), len(train))
        if num_samples > smallest:
            raise JaxgenError(f"{flag} {num_samples} is more than the {smallest} images of "
                              f"{dataset}'s smaller split, which the real-data floor needs; "
                              f"pass at most {smallest}.")
        key = named_key(jax.random.PRNGKey(seed), "shuffle")
        pick = lambda position, n: np.asarray(  # noqa: E731 - a random subset of N of n
            jax.random.permutation(jax.random.fold_in(key, position), n)[:num_samples])
        self.reference_features, _ = extractor.embed(train.images[pick(0, len(train))])
        test_features, test_probs = extractor.embed(test.images)
        self.test_accuracy = float(np.mean(np.argmax(test_probs, -1) == test.labels))
        subset = pick(1, len(test))
        self.floor = self.score_features(test_features[subset], test_probs[subset])

    def score_features(self, features: np.ndarray, probs: np.ndarray) -> dict:
        return sample_metrics(features, probs, self.reference_features, self.k, self.flag)

    def evaluate(self, images: np.ndarray) -> dict:
        """The scores of ``images`` (N, 28, 28, 1) in [-1, 1] (or uint8); quantized to uint8
        first, as when saved to a PNG."""
        if len(images) != self.num_samples:
            raise JaxgenError(f"got {len(images)} images to score against a reference of "
                              f"{self.num_samples}; pass {self.num_samples} images.")
        return self.score_features(*self.extractor.embed(quantize(images)))

    def classifier_info(self) -> dict:
        return {"path": self.extractor.directory, "dataset": self.extractor.dataset,
                "test_accuracy": self.test_accuracy, "feature_dim": self.extractor.feature_dim,
                "checkpoint_epoch": self.extractor.epoch}


def evaluate_run(workdir: str, classifier_dir: str, num_samples: int = 10000,
                 data_dir: Optional[str] = None, seed: int = 0, devices: Optional[list] = None,
                 k: int = 3, log=print) -> dict:
    """Scores ``num_samples`` samples of the generative run in ``workdir`` (its newest
    checkpoint) and the real-data floor, with the classifier in ``classifier_dir``; writes
    ``workdir/eval.json`` (process 0) and returns its content. Everything is checked before
    anything is computed or written."""
    from jaxgen.train.restore import TASKS, is_generative, sample_images

    start = time.time()
    if not isinstance(k, int) or not 1 <= k < num_samples:
        raise JaxgenError(f"--k must be a positive integer below --num-samples {num_samples}, "
                          f"got {k}.")
    model_epoch, model_meta = newest_meta(workdir, "--workdir",
                                          "pass the --workdir of a training run")
    task_name, dataset = model_meta.get("task"), model_meta.get("config", {}).get("dataset")
    task_cls = TASKS.get(task_name, (None, None))[1]
    if task_cls is None or not is_generative(task_cls):
        raise JaxgenError(f"--workdir {workdir} holds a {task_name} run, which is not a "
                          "generative model; pass the --workdir of a GAN or VAE run.")
    _, cls_meta = classifier_meta(classifier_dir)
    check_dataset(cls_meta["config"]["dataset"], dataset, classifier_dir)
    check_num_samples(num_samples, cls_meta["config"]["feature_dim"])

    extractor = load_classifier(classifier_dir, devices=devices)
    evaluator = Evaluator(extractor, dataset, num_samples, data_dir, seed, k)
    images = sample_images(workdir, num_samples, seed=seed, devices=devices)
    result = {"model": {"workdir": os.path.abspath(workdir), "task": task_name,
                        "dataset": dataset, "checkpoint_epoch": model_epoch},
              **evaluator.evaluate(images),
              "num_samples": num_samples, "seed": seed, "k": k,
              "floor": evaluator.floor, "classifier": evaluator.classifier_info(),
              "seconds": time.time() - start}
    if parallel.is_main_process():
        _write_json(os.path.join(os.path.abspath(workdir), EVAL_FILE), result)
    return result


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def format_table(result: dict, name: str = "model") -> str:
    """The scores of ``result`` (as ``evaluate_run`` returns) beside the floor, as text."""
    rows = [("FID (lower is better)", "fid", "{:.3f}"),
            ("Inception score (max 10)", "inception_score", "{:.3f}"),
            ("classes covered", "classes_covered", "{:d}/10"),
            ("class KL from uniform", "class_kl", "{:.4f}"),
            ("precision (k=%d)" % result.get("k", 3), "precision", "{:.3f}"),
            ("recall (k=%d)" % result.get("k", 3), "recall", "{:.3f}")]
    lines = [f"{'':26s}{name:>14s}{'real-data floor':>18s}"]
    for label, key, fmt in rows:
        lines.append(f"{label:26s}{fmt.format(result[key]):>14s}"
                     f"{fmt.format(result['floor'][key]):>18s}")
    return "\n".join(lines)


class EvaluateEvery:
    """An epoch hook for ``loop.train``: every ``every`` epochs (and after the last), scores
    ``num_samples`` samples of the model being trained as ``evaluate_run`` does, appends the
    scores to ``WORKDIR/eval_history.jsonl`` and draws ``WORKDIR/<task>_fid.png``.

    The samples come from one fixed key of the run (``named_key(rng, "sample", 1)``), so the
    curve shows the model changing, not the latent draws. The classifier is checked when the
    hook is made (so bad input stops training before it starts) and restored at the first
    evaluation, onto the training mesh's devices."""

    def __init__(self, classifier_dir: str, every: int, num_samples: int = 10000,
                 data_dir: Optional[str] = None, dataset: Optional[str] = None, seed: int = 0,
                 k: int = 3):
        if not isinstance(every, int) or every < 1:
            raise JaxgenError(f"--eval-every must be a positive integer, got {every}.")
        _, meta = classifier_meta(classifier_dir)
        if dataset is not None:
            check_dataset(meta["config"]["dataset"], dataset, classifier_dir)
        check_num_samples(num_samples, meta["config"]["feature_dim"], "--eval-samples")
        self.classifier_dir, self.every, self.num_samples = classifier_dir, every, num_samples
        self.data_dir, self.seed, self.k = data_dir, seed, k
        self._evaluator: Optional[Evaluator] = None

    def __call__(self, task, state, epoch: int, workdir: str) -> None:
        if epoch % self.every and epoch != task.config.epochs:
            return
        mesh = state.step.sharding.mesh
        if self._evaluator is None:
            extractor = load_classifier(self.classifier_dir, devices=list(mesh.devices.flat))
            self._evaluator = Evaluator(extractor, task.config.dataset, self.num_samples,
                                        self.data_dir, self.seed, self.k, "--eval-samples")
        from jaxgen.train.restore import draw_samples

        images = draw_samples(task, state.model, self.num_samples,
                              named_key(state.rng, "sample", 1))
        row = {"epoch": epoch, **self._evaluator.evaluate(images),
               "floor": self._evaluator.floor}
        if parallel.is_main_process():
            self._write(task, workdir, row)
            print(f"Eval: [{epoch:2d}] FID {row['fid']:.3f} (floor {row['floor']['fid']:.3f}), "
                  f"IS {row['inception_score']:.3f}, classes {row['classes_covered']}, "
                  f"precision {row['precision']:.3f}, recall {row['recall']:.3f}", flush=True)

    def _write(self, task, workdir: str, row: dict) -> None:
        path = os.path.join(workdir, HISTORY_FILE)
        rows = []
        if os.path.exists(path):  # a resumed run evaluates its epochs again: keep each once
            with open(path) as f:
                rows = [r for r in map(json.loads, filter(str.strip, f))
                        if r["epoch"] < row["epoch"]]
        rows.append(row)
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(path + ".tmp", path)
        viz.plot_curves({"FID": [r["fid"] for r in rows],
                         "real-data floor": [r["floor"]["fid"] for r in rows]},
                        os.path.join(workdir, f"{task.name}_fid.png"), xlabel="epoch",
                        ylabel=f"FID ({self.num_samples} samples)",
                        title=f"{task.name} on {task.config.dataset}",
                        x=[r["epoch"] for r in rows])
