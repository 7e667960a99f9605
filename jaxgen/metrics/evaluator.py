"""Scoring a generative model's samples against real images, beside the real-data floor.

The reference is N training images (a fixed random subset); a model's N samples are scored
against it. The floor scores N *test* images against the same reference: what a generator that
draws fresh images from the data distribution itself would get at this N. The Fréchet distance
and precision/recall are biased at finite N, so only numbers at the same N compare, and a model
is judged by its distance to the floor, not to 0.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from jaxgen import data
from jaxgen.errors import JaxgenError
from jaxgen.keys import named_key
from jaxgen.metrics import scores
from jaxgen.metrics.features import FeatureExtractor, quantize

METRICS = ("fid", "inception_score", "classes_covered", "class_kl", "precision", "recall")


def train_classifier_hint(workdir: str, dataset: str = "DATASET") -> str:
    return (f"train one with python experiments/train_classifier.py --dataset {dataset} "
            f"--workdir {workdir}")


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


def real_splits(num_samples: int, dataset: str, data_dir: Optional[str],
                flag: str = "--num-samples") -> tuple[data.Dataset, data.Dataset]:
    """The training and test splits the scores compare with, checked to hold ``num_samples``
    images each (the real-data floor draws that many from both)."""
    test = data.load_dataset(dataset, "test", data_dir)
    train = data.load_dataset(dataset, "train", data_dir)
    smallest = min(len(test), len(train))
    if num_samples > smallest:
        raise JaxgenError(f"{flag} {num_samples} is more than the {smallest} images of "
                          f"{dataset}'s smaller split, which the real-data floor needs; "
                          f"pass at most {smallest}.")
    return train, test


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
        train, test = real_splits(num_samples, dataset, data_dir, flag)
        key = named_key(jax.random.PRNGKey(seed), "shuffle")

        def pick(position: int, n: int) -> np.ndarray:  # a random subset of N of n
            return np.asarray(
                jax.random.permutation(jax.random.fold_in(key, position), n)[:num_samples])

        self.reference_features, _ = extractor.embed(train.images[pick(0, len(train))])
        test_features, test_probs = extractor.embed(test.images)
        self.test_accuracy = float(np.mean(np.argmax(test_probs, -1) == test.labels))
        subset = pick(1, len(test))
        self.floor = self.score_features(test_features[subset], test_probs[subset])
        # What label accuracy real test images get: the classifier's accuracy on the subset.
        self.floor_label_accuracy = scores.label_accuracy(test_probs[subset],
                                                          test.labels[subset])

    def score_features(self, features: np.ndarray, probs: np.ndarray) -> dict:
        return sample_metrics(features, probs, self.reference_features, self.k, self.flag)

    def evaluate(self, images: np.ndarray, labels: Optional[np.ndarray] = None,
                 match_codes: int = 0) -> dict:
        """The scores of ``images`` (N, 28, 28, 1) in [-1, 1] (or uint8); quantized to uint8
        first, as when saved to a PNG. With ``labels``, the label each image was drawn with,
        also ``label_accuracy``; with ``match_codes`` = K > 0 those labels are K categorical
        codes learned without labels, each matched to the class the classifier most often
        assigns to it first (``code_to_class``: the class of each code)."""
        if len(images) != self.num_samples:
            raise JaxgenError(f"got {len(images)} images to score against a reference of "
                              f"{self.num_samples}; pass {self.num_samples} images.")
        features, probs = self.extractor.embed(quantize(images))
        result = self.score_features(features, probs)
        if labels is not None and match_codes:
            result["label_accuracy"], result["code_to_class"] = scores.matched_label_accuracy(
                probs, labels, match_codes)
        elif labels is not None:
            result["label_accuracy"] = scores.label_accuracy(probs, labels)
        return result

    def classifier_info(self) -> dict:
        return {"path": self.extractor.directory, "dataset": self.extractor.dataset,
                "test_accuracy": self.test_accuracy, "feature_dim": self.extractor.feature_dim,
                "checkpoint_epoch": self.extractor.epoch}


SCORES = METRICS + ("label_accuracy",)  # a conditional model's scores add its label accuracy


def summarise_runs(runs: list[dict], keys=SCORES) -> dict:
    """The scores of several runs (each a dict of ``keys``, default :data:`SCORES`, e.g. a seed
    ensemble's): each score's mean over the runs, and under ``"std"`` their sample standard
    deviation (of n - 1 degrees of freedom). A key some run lacks is left out."""
    keys = [k for k in keys if all(k in run for run in runs)]
    values = {k: np.asarray([run[k] for run in runs], dtype=float) for k in keys}
    return {**{k: float(v.mean()) for k, v in values.items()},
            "std": {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()}}


def format_table(result: dict, name: str = "model") -> str:
    """The scores of ``result`` (as ``evaluate_run`` returns) beside the floor, as text; a seed
    ensemble's (with ``"std"``) as mean ± std over its runs."""
    rows = [("FID (lower is better)", "fid", "{:.3f}"),
            ("Inception score (max 10)", "inception_score", "{:.3f}"),
            ("classes covered", "classes_covered", "{:d}/10"),
            ("class KL from uniform", "class_kl", "{:.4f}"),
            ("precision (k=%d)" % result.get("k", 3), "precision", "{:.3f}"),
            ("recall (k=%d)" % result.get("k", 3), "recall", "{:.3f}")]
    if "label_accuracy" in result:
        rows.append(("label accuracy", "label_accuracy", "{:.3f}"))
    std = result.get("std")
    width = 22 if std else 14
    lines = [f"{'':26s}{name:>{width}s}{'real-data floor':>18s}"]
    for label, key, fmt in rows:
        if std:  # a mean over runs: classes covered too is a fraction
            number = "{:.1f}" if key == "classes_covered" else fmt.split("/")[0]
            shown = (f"{number.format(result[key])} ± {number.format(std[key])}"
                     + ("/10" if key == "classes_covered" else ""))
        else:
            shown = fmt.format(result[key])
        lines.append(f"{label:26s}{shown:>{width}s}"
                     f"{fmt.format(result['floor'][key]):>18s}")
    if "code_to_class" in result:
        lines.append("categorical codes matched to classes: "
                     + ", ".join(f"{code}->{cls}" for code, cls
                                 in enumerate(result["code_to_class"])))
    return "\n".join(lines)
