"""What the KL study's scripts share: the options and checks of their flags, the classifier's
scores of prior samples, a seed ensemble's runs taken one by one, the records (CSV, markdown
tables, numbers, means ± std over runs, column notes, the command) and the pictures of trained
VAEs (prior samples, reconstructions, the 2-D latent space)."""

from __future__ import annotations

import csv
import os
import sys
from typing import Iterable, Optional, Sequence

import jax
import numpy as np
from claims import QualityFn

from jaxgen import cli, data, viz
from jaxgen.config import POSITIVE_INT, Check, setting
from jaxgen.data import Dataset
from jaxgen.errors import JaxgenError
from jaxgen.metrics import Evaluator
from jaxgen.metrics.evaluator import summarise_runs
from jaxgen.runs import latents
from jaxgen.runs.evaluate import load_classifier
from jaxgen.runs.restore import draw_samples
from jaxgen.train import ensemble
from jaxgen.train.vae import fixed_targets, interleave_rows
from jaxgen.workdir import write_atomically

# ------------------------------------------------------------------------------ options
AT_LEAST_TWO = Check(lambda v: v >= 2, "at least 2")
CLASSIFIER_HELP = ("workdir of experiments/train_classifier.py on the same dataset: prior samples "
                   "are scored in its feature space (FID, precision, recall, classes)")


def classifier_setting(help: str = CLASSIFIER_HELP):
    """--classifier: the workdir of the classifier that scores prior samples (none: unscored)."""
    return setting(None, help, metavar="DIR")


def num_samples_setting(help: str = "prior samples for the quality scores"):
    """--num-samples: how many prior samples are scored."""
    return setting(10000, help, AT_LEAST_TWO, metavar="N")


def nn_samples_setting(help: str):
    """--nn-samples: how many prior samples the memorisation test looks up."""
    return setting(1000, help, POSITIVE_INT, metavar="N")


def validate(options, test_eval, base=None, gaussian: Optional[str] = None,
             compares: Optional[str] = None) -> None:
    """The study's options and its evaluation's (one ``error:`` line on bad input); with
    ``gaussian`` (what needs it), that ``base`` has a Gaussian decoder; with ``compares`` (what
    the study compares), that --eval-images is not 0."""
    options.validate()
    test_eval.validate()
    if gaussian is not None and base.likelihood != "gaussian":
        raise JaxgenError(f"--likelihood must be gaussian {gaussian}.")
    if compares is not None and test_eval.eval_images == 0:
        raise JaxgenError(f"{compares}: --eval-images must not be 0.")


def start(args, base, configs: Iterable, name: str):
    """(run, train, test): every config of the study checked, then the run prepared
    (``cli.prepare_run``, ``name`` its default workdir) and both splits of the dataset loaded."""
    for config in configs:
        config.validate()
    run = cli.prepare_run(args, base, name)
    train = data.load_dataset(base.dataset, "train", run.options.data_dir)
    test = data.load_dataset(base.dataset, "test", run.options.data_dir)
    return run, train, test


# ------------------------------------------------------------------------------ scoring
# The Evaluator's figure behind each prior-sample column.
QUALITY_METRICS = {"prior_fid": "fid", "prior_is": "inception_score",
                   "prior_classes": "classes_covered", "prior_precision": "precision",
                   "prior_recall": "recall"}
# The sweeps' and the training-set-size study's columns and their description.
CLAIMS_QUALITY = ("prior_fid", "prior_precision", "prior_recall", "prior_classes")
CLAIMS_QUALITY_NOTE = (
    "{num_samples} prior samples (decoder means) scored in the feature space of the classifier "
    "in `{classifier}` (test accuracy {accuracy:.4f}) against as many training images: "
    "`prior_fid`, `prior_precision`, `prior_recall` (k-NN manifolds, k=3), `prior_classes` "
    "(classes hit). Real test images scored the same way: fid {fid:.3f}, precision "
    "{precision:.3f}, recall {recall:.3f}, classes {classes}.")


def classifier_quality(classifier: Optional[str], dataset: str, num_samples: int,
                       data_dir: Optional[str] = None, columns: Sequence[str] = CLAIMS_QUALITY,
                       note: str = CLAIMS_QUALITY_NOTE) -> Optional[tuple[str, QualityFn]]:
    """(description, score) of prior samples in the feature space of the classifier in the
    workdir ``classifier`` (None without one): ``score`` maps ``num_samples`` samples in [-1, 1]
    to ``columns`` (of ``QUALITY_METRICS``, in that order); the description is ``note`` filled
    in with num_samples, classifier, accuracy and the real data's fid, inception, precision,
    recall and classes."""
    if classifier is None:
        return None
    evaluator = Evaluator(load_classifier(classifier), dataset, num_samples, data_dir)
    floor = evaluator.floor
    description = note.format(
        num_samples=num_samples, classifier=classifier, accuracy=evaluator.test_accuracy,
        fid=floor["fid"], inception=floor["inception_score"], precision=floor["precision"],
        recall=floor["recall"], classes=floor["classes_covered"])

    def score(samples: np.ndarray) -> dict:
        m = evaluator.evaluate(samples)
        return {column: m[QUALITY_METRICS[column]] for column in columns}

    return description, score


# ------------------------------------------------------------------------------ seed ensembles
def each_run(task, state, summary: Optional[dict]) -> list[tuple]:
    """(task, state, test summary) of each run of a trained VAE: a solo run itself; an
    ensemble's runs as the solo runs of their seeds, their states on the host (summaries None
    when ``summary`` is)."""
    if ensemble.num_runs(task) == 1:
        return [(task, state, summary)]
    return [(ensemble.run_task(task, r), jax.device_get(ensemble.run_state(state, r)),
             None if summary is None else summary["runs"][r])
            for r in range(ensemble.num_runs(task))]


def describe_seeds(config) -> str:
    """``seed S`` of a solo run, ``seeds S..L`` of an ensemble's runs."""
    last = config.seed + config.num_seeds - 1
    return f"seed {config.seed}" if last == config.seed else f"seeds {config.seed}..{last}"


def run_directory(directory: str, run: int, num_runs: int) -> str:
    """Where run ``run`` of the runs trained in ``directory`` keeps its own measurements: the
    directory itself for a solo run, ``run<r>/`` in it for an ensemble's (made by what writes
    there)."""
    return directory if num_runs == 1 else os.path.join(directory, f"run{run}")


def summarise(rows: Sequence[dict], by: Sequence[str]) -> list[dict]:
    """The rows of several runs grouped by their ``by`` columns (first seen first): per group,
    the ``by`` columns, ``runs`` (how many), and each other numeric column's mean over the runs
    with its sample std as ``<column>_std`` (0 for one run); ``seed`` is left out."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    out = []
    for key, runs in groups.items():
        columns = [k for k, v in runs[0].items() if k not in by and k != "seed"
                   and isinstance(v, (int, float, np.number)) and not isinstance(v, bool)]
        spread = summarise_runs(runs, columns)
        columns = [k for k in columns if k in spread["std"]]  # those every run has
        out.append({**dict(zip(by, key)), "runs": len(runs),
                    **{k: spread[k] for k in columns},
                    **{f"{k}_std": spread["std"][k] for k in columns}})
    return out


def mean_std(entry: dict, column: str, digits: int = 3, std_digits: int = 3) -> str:
    """A table cell of a ``summarise`` entry: ``mean ± std`` of ``column`` (``-`` without it;
    one run's value alone, which has no spread)."""
    if column not in entry:
        return "-"
    if entry["runs"] == 1:
        return fmt(entry[column], digits)
    return f"{fmt(entry[column], digits)} ± {fmt(entry[column + '_std'], std_digits)}"


# ------------------------------------------------------------------------------ records
def fmt(value, digits: int = 3) -> str:
    """A table's number: an integer as it is; else ``digits`` significant digits below 1 and
    two decimals from 1 on."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    if value == 0:
        return "0"
    return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.2f}"


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table of ``head`` over ``rows`` of cells already formatted."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def column_notes(columns: dict, only: Optional[Iterable[str]] = None) -> str:
    """A markdown list of what each column means (of ``only``'s, when given)."""
    return "\n".join(f"- `{k}`: {v}" for k, v in columns.items() if only is None or k in only)


def command() -> str:
    """The record's ``Command:`` line: the command that runs."""
    return f"Command: `python {' '.join(sys.argv)}`"


def write_csv(path: str, rows: Sequence[dict]) -> None:
    """``rows`` as CSV, their first row's keys as the header."""
    with write_atomically(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# ------------------------------------------------------------------------------ pictures
# runs: label -> (task, state) of a trained VAE, one panel each.
def draw_prior_samples(runs: dict, path: str, title: str) -> dict:
    """64 decoder means at z ~ N(0, I) (seed 0) per run; returns them by label."""
    samples = {label: draw_samples(task, state.model, 64, jax.random.PRNGKey(0))
               for label, (task, state) in runs.items()}
    viz.save_image_panels(samples, path, ncols=8, title=title)
    return samples


def draw_reconstructions(runs: dict, images: np.ndarray, path: str, title: str) -> None:
    """``images`` (odd rows) and the decoder means at their posterior means (even rows)."""
    viz.save_image_panels(
        {label: interleave_rows(fixed_targets(task, images) * 2 - 1,
                                latents.reconstructions(task, state.model.params, images),
                                ncols=8)
         for label, (task, state) in runs.items()}, path, ncols=8, title=title)


def draw_latent_space(runs: dict, test: Dataset, workdir: str, scatter_title: str,
                      grid_title: str) -> None:
    """Of runs with a 2-D latent: ``latent_scatter.png``, the test images' posterior means
    coloured by class, and ``latent_grid.png``, the decoder over a grid of [-2, 2]^2."""
    viz.plot_latent_scatter(
        {label: (latents.encode_means(task, state.model.params, test.images), test.labels)
         for label, (task, state) in runs.items()}, test.class_names,
        os.path.join(workdir, "latent_scatter.png"), title=scatter_title)
    points = viz.latent_grid_points(15, 2.0)
    viz.save_image_panels(
        {label: latents.decode_means(task, state.model.params, points)
         for label, (task, state) in runs.items()},
        os.path.join(workdir, "latent_grid.png"), ncols=15, title=grid_title)
