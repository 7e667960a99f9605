"""The KL question where overfitting can happen: the textbook's claims measured against the size of
the training set, for beta = 0 (reconstruction only), beta = 1 and a strong KL, over several seeds.

    python experiments/kl/data_size.py --dataset fashion_mnist \\
        --data-dir /path/to/idx-files --classifier experiments/results/classifier_fashion_mnist \\
        --workdir checkpoints/vae_kl_data_size

Each training set is the first n images of one fixed permutation of the training split (seed 0,
whatever --seed), so the sets are nested; the test set is the same for all. Every run trains the
same number of steps whatever n: an epoch is len(training split) images (the n images repeated
len // n times, shuffled together), so --epochs 20 is 20 x 60,000 images for n = 500 and for
n = 60,000 alike. A point is a KL weight and a decoder std, beta:sigma (beta_eff = 2 sigma^2 beta;
the default 1:0.5 is the sigma sweep's strong-KL point, beta_eff = 0.5). Each point and size
trains --num-seeds runs (default 3; seeds --seed, --seed + 1, ...) together in one compiled
program, each run measured as a solo run is.

Every --gap-every epochs a run measures its squared error and reconstruction term on training
and test images (the train/test gap over training). After training, the measurements of
``claims.py`` (probes, I(x; z), rate, train/test gaps, memorisation, prior-sample
quality). The memorisation test compares each prior sample's nearest training image with its
nearest test image among as many of each (min(n, 10000 - held out)); --nn-samples test images,
drawn by a fixed permutation, are held out of those references and scored the same way: the
null, which real images never trained on give.

Writes into --workdir:
  runs/n<n>_beta<b>_sigma<s>/          each point's runs (checkpoints, grids, test_eval.json);
                                       with several seeds, run<r>/ in it holds each run's
                                       claims.json, gap_history.json, nn_distances.npz
  data_size_runs.csv                   one row per run, every measurement
  data_size.md                         per point and n, mean +- std over the seeds (one
                                       seed's value alone), the command
  claim1_latent.png, claim2_overfitting.png, claim3_samples.png
                                       one figure per claim: its measures against n
  nn_distances.png                     nearest-image distances to train and test, per n
  gap_over_training.png                the test - train squared error over training, per n

Every run resumes; rerunning the same command only does what is missing. --part I/K trains and
measures every K-th (point, size) from the I-th (1-based; e.g. two processes at once); without
it every one, then the tables and figures.
"""

import argparse
import dataclasses
import json
import os
from typing import Optional

import claims  # beside this script
import figures
import numpy as np
import report

from jaxgen import cli, parallel
from jaxgen.config import POSITIVE_INT, Check, Settings, setting
from jaxgen.data import Dataset
from jaxgen.errors import JaxgenError
from jaxgen.train import ensemble, vae_eval
from jaxgen.train.vae import VAEConfig
from jaxgen.train.vae_eval import TestEvalOptions
from jaxgen.workdir import ensure_writable, write_atomically

SUBSET_SEED = 0  # the permutation whose prefixes are the training sets


def _points(text: str) -> tuple[tuple[float, float], ...]:
    try:
        return tuple(tuple(float(v) for v in p.split(":")) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected beta:sigma pairs such as 0:0.1,1:0.1, got {text!r}") from None


def _part(text: str) -> tuple[int, int]:
    try:
        i, k = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/K such as 1/2, got {text!r}") from None
    return i, k


VALID_POINTS = Check(lambda v: len(v) > 0 and len(set(v)) == len(v)
                     and all(len(p) == 2 and p[0] >= 0 and p[1] > 0 for p in v),
                     "distinct beta:sigma pairs, beta >= 0 and sigma > 0, such as 0:0.1,1:0.5")
VALID_SIZES = Check(lambda v: len(v) > 0 and len(set(v)) == len(v)
                    and all(isinstance(n, int) and n >= 2 for n in v),
                    "distinct training-set sizes of at least 2, such as 500,2000")
VALID_PART = Check(lambda v: v is None or (v[1] >= 1 and 1 <= v[0] <= v[1]),
                   "I/K with 1 <= I <= K, such as 1/2")


@dataclasses.dataclass(frozen=True)
class DataSizeOptions(Settings):
    """What the study varies, beside the VAE's own settings (--sigma and --beta are per point)."""

    sizes: tuple[int, ...] = setting((500, 2000, 10000, 60000), "training-set sizes (nested "
                                     "prefixes of one fixed permutation)", VALID_SIZES,
                                     metavar="N,N")
    points: tuple[tuple[float, float], ...] = setting(
        ((0.0, 0.1), (1.0, 0.1), (1.0, 0.5)), "beta:sigma pairs to train (beta_eff = 2 sigma^2 "
        "beta)", VALID_POINTS, metavar="B:S,B:S", parse=_points)
    gap_every: int = setting(2, "epochs between measurements of the train/test gap during "
                             "training", POSITIVE_INT, metavar="E")
    gap_images: int = setting(1000, "training (at most n) and test images of those "
                              "measurements", POSITIVE_INT, metavar="N")
    nn_samples: int = report.nn_samples_setting("prior samples whose nearest training and test "
                                                "images are found, and real test images held "
                                                "out as the null")
    num_samples: int = report.num_samples_setting()
    classifier: Optional[str] = report.classifier_setting()
    part: Optional[tuple[int, int]] = setting(
        None, "train and measure every K-th (point, size) from the I-th only, and write no "
        "table",
        VALID_PART, metavar="I/K", parse=_part)


@dataclasses.dataclass(frozen=True)
class Point:
    n: int
    beta: float
    sigma: float

    @property
    def name(self) -> str:
        return f"n{self.n}_beta{self.beta:g}_sigma{self.sigma:g}"

    @property
    def label(self) -> str:
        return f"beta={self.beta:g}, sigma={self.sigma:g}"

    @property
    def beta_eff(self) -> float:
        return 2 * self.sigma ** 2 * self.beta


def main() -> None:
    parser = cli.training_parser(__doc__, VAEConfig, exclude=("beta", "sigma"),
                                 defaults={"likelihood": "gaussian", "epochs": 20,
                                           "num_seeds": 3})
    TestEvalOptions.add_flags(parser, "the evaluation after training (on as many training as "
                                      "test images)", defaults={"iwae_k": 200,
                                                                "eval_images": 1000})
    DataSizeOptions.add_flags(parser, "the study")
    args = cli.parse(parser)

    base = VAEConfig.from_flags(args, beta=1.0, sigma=VAEConfig.sigma)
    options = DataSizeOptions.from_flags(args)
    test_eval = TestEvalOptions.from_flags(args)
    report.validate(options, test_eval, base,
                    gaussian="for this study (its points set the decoder's std)",
                    compares="the study compares training and test figures")
    points = [Point(n, beta, sigma) for n in options.sizes for beta, sigma in options.points]
    run, train, test = report.start(args, base, (config_of(base, p) for p in points),
                                    "vae_kl_data_size")
    check_sizes(options, len(train), len(test), base.batch_size)
    order = np.random.RandomState(SUBSET_SEED).permutation(len(train))
    quality = report.classifier_quality(options.classifier, base.dataset, options.num_samples,
                                        run.options.data_dir)
    workdir = ensure_writable(run.workdir)
    chosen = points if options.part is None else points[options.part[0] - 1::options.part[1]]
    run.log(f"Training-set sizes {', '.join(map(str, options.sizes))} on {base.dataset}, "
            f"{len(chosen)} of {len(points)} points of {base.num_seeds} run(s), {base.epochs} "
            f"epochs of {len(train)} images each, {run.describe()}")
    rows = []
    for i, p in enumerate(chosen):
        run.log(f"--- {i + 1}/{len(chosen)}: n={p.n}, {p.label}, {report.describe_seeds(base)}")
        rows += train_and_measure(base, p, subset(train, order, p.n), test, len(train),
                                  workdir, run.mesh, options, test_eval, quality, run.log)
    if options.part is None and parallel.is_main_process():
        write_results(rows, workdir, base, options, test_eval, quality)
        run.log(f"wrote {os.path.join(workdir, 'data_size.md')} and the figures beside it")


def check_sizes(options: DataSizeOptions, num_train: int, num_test: int, batch: int) -> None:
    largest = max(options.sizes)
    if largest > num_train:
        raise JaxgenError(f"--sizes asks for {largest} training images but the training split "
                          f"has {num_train}; pass sizes up to {num_train}.")
    uneven = [n for n in options.sizes if num_train % n]
    if uneven:
        raise JaxgenError(f"--sizes must divide the training split's {num_train} images, so "
                          f"that every run trains as many steps; {uneven[0]} does not.")
    if options.nn_samples >= num_test:
        raise JaxgenError(f"--nn-samples {options.nn_samples} leaves no test images for the "
                          f"memorisation references (the test split has {num_test}); pass "
                          f"fewer than {num_test}.")
    if batch > num_train:
        raise JaxgenError(f"--batch-size {batch} is larger than an epoch of {num_train} images; "
                          "pass a smaller one.")


def config_of(base: VAEConfig, p: Point) -> VAEConfig:
    return dataclasses.replace(base, beta=p.beta, sigma=p.sigma)


def subset(train: Dataset, order: np.ndarray, n: int) -> Dataset:
    """The first n training images of the fixed permutation ``order``."""
    pick = np.sort(order[:n])
    return dataclasses.replace(train, images=train.images[pick], labels=train.labels[pick])


def repeated(images: np.ndarray, epoch_images: int) -> np.ndarray:
    """``images`` repeated to ``epoch_images`` (a multiple of their number)."""
    return np.tile(images, (max(1, epoch_images // len(images)), 1, 1, 1))


def gap_hook(train_images: np.ndarray, test_images: np.ndarray, every: int, mesh):
    """An epoch hook writing, every ``every`` epochs, the squared error and reconstruction term
    on ``train_images`` and ``test_images`` to ``gap_history.json`` (kept across resumes), each
    run of an ensemble to its own (``report.run_directory``)."""

    def hook(task, state, epoch, workdir):
        if epoch % every:
            return
        runs = ensemble.num_runs(task)
        for r in range(runs):
            params = state.model.params if runs == 1 else ensemble.run_state(
                state.model.params, r)
            entry = {"epoch": epoch}
            for split, images in (("train", train_images), ("test", test_images)):
                summary, _ = vae_eval.evaluate(task, params, images, mesh, iwae_k=1)
                entry.update({f"mse_{split}": summary["mse"],
                              f"recon_{split}": summary["recon"]})
            if parallel.is_main_process():
                directory = report.run_directory(workdir, r, runs)
                os.makedirs(directory, exist_ok=True)
                path = os.path.join(directory, GAP_FILE)
                history = []
                if os.path.exists(path):
                    with open(path) as f:
                        history = [h for h in json.load(f) if h["epoch"] < epoch]
                with write_atomically(path) as f:
                    json.dump(history + [entry], f, indent=1)

    return hook


GAP_FILE = "gap_history.json"


def train_and_measure(base: VAEConfig, p: Point, train: Dataset, test: Dataset,
                      epoch_images: int, workdir: str, mesh, options: DataSizeOptions,
                      test_eval: TestEvalOptions, quality, log) -> list[dict]:
    """Trains (or resumes) the runs of one point on ``train`` repeated to ``epoch_images`` an
    epoch, then measures each (``claims.measure``, read back when already measured); their table
    rows."""
    config = config_of(base, p)
    directory = os.path.join(workdir, "runs", p.name)
    n_eval = min(test_eval.eval_images or len(test), p.n, len(test))
    n_gap = min(options.gap_images, p.n, len(test))
    hook = gap_hook(train.images[:n_gap], test.images[:n_gap], options.gap_every, mesh)
    images = repeated(train.images, epoch_images)
    task, state, summary = vae_eval.train_and_evaluate(
        config, images, test.images, directory, mesh, iwae_k=test_eval.iwae_k,
        eval_images=n_eval, epoch_hooks=(hook,), log=log)
    runs = report.each_run(task, state, summary)
    rows = []
    for r, (one_task, one_state, one_summary) in enumerate(runs):
        row = claims.measure(one_task, one_state, train, test,
                             report.run_directory(directory, r, len(runs)), mesh,
                             summary["epoch"], one_summary, test_eval.iwae_k, n_eval,
                             nn_samples=options.nn_samples, num_samples=options.num_samples,
                             quality=quality, log=log, held_out=options.nn_samples)
        rows.append({"n": p.n, "beta": p.beta, "sigma": p.sigma, "beta_eff": p.beta_eff,
                     "seed": one_task.config.seed, "epochs": summary["epoch"],
                     "steps": summary["epoch"] * (len(images) // config.batch_size),
                     **row, "mse_gap": row["mse_test"] - row["mse_train"]})
    return rows


# ------------------------------------------------------------------------------ results
# The table's columns: (column, heading).
TABLE = [
    ("rate", "rate"), ("mi", "I(x; z)"), ("probe_acc", "probe"), ("nn_acc", "1-NN"),
    ("active_units", "active"), ("mean_sigma", "enc. std"), ("mse_train", "MSE train"),
    ("mse_test", "MSE test"), ("mse_gap", "MSE gap"), ("recon_gap", "recon gap"),
    ("iwae_gap", "IWAE gap"), ("nearer_train", "nearer train"),
    ("null_nearer_train", "null"), ("prior_fid", "FID"), ("prior_precision", "precision"),
    ("prior_recall", "recall"),
]


def summarise(rows: list[dict]) -> list[dict]:
    """Per point and n, in order: ``report.summarise`` of its runs (mean and std over seeds)."""
    return sorted(report.summarise(rows, ("beta", "sigma", "n")),
                  key=lambda s: (s["beta"], s["sigma"], s["n"]))


def markdown_table(summary: list[dict]) -> str:
    """Mean ± std over the seeds of ``TABLE``'s columns (one seed's value alone), a row per
    point and n."""
    return report.markdown_table(
        ["beta", "sigma", "n", "runs"] + [h for _, h in TABLE],
        ([f"{s['beta']:g}", f"{s['sigma']:g}", str(s["n"]), str(s["runs"])]
         + [report.mean_std(s, k) for k, _ in TABLE] for s in summary))


def write_results(rows: list[dict], workdir: str, base: VAEConfig, options: DataSizeOptions,
                  test_eval: TestEvalOptions, quality) -> None:
    report.write_csv(os.path.join(workdir, "data_size_runs.csv"), rows)
    summary = summarise(rows)
    notes = report.column_notes(claims.COLUMNS)
    notes += ("\n- `mse_gap`: mse_test - mse_train\n- `null_nearer_train`: `nearer_train` of "
              f"{options.nn_samples} real test images held out of the references (never "
              "trained on): the test's null")
    if quality:
        notes += f"\n- prior-sample quality: {quality[0]}"
    setup = (f"{base.dataset}; training sets of {', '.join(map(str, options.sizes))} images "
             f"(nested prefixes of one permutation), each repeated to an epoch of the whole "
             f"split; {base.epochs} epochs, batch {base.batch_size}, "
             f"{report.describe_seeds(base)}; {base.architecture} 784-"
             f"{'-'.join(map(str, base.hidden))}-{base.latent_dim}, Gaussian decoder of fixed std "
             f"sigma, K = {base.mc_samples}, Adam lr {base.lr}. Train and test figures on "
             f"min(n, {test_eval.eval_images}) images of each split (IWAE k = "
             f"{test_eval.iwae_k}); probes fitted on the n training images; I(x; z) on the whole "
             "test set." + (" Each cell: mean ± std over the seeds." if base.num_seeds > 1
                            else ""))
    with write_atomically(os.path.join(workdir, "data_size.md")) as f:
        f.write(f"# The KL question against the training-set size\n\n{report.command()}\n\n"
                f"Setup: {setup}\n\n{markdown_table(summary)}\n\n{notes}\n")
    title = (f"{base.dataset}, Gaussian decoder, {base.epochs} epochs of the split"
             + ("; mean ± std over seeds" if base.num_seeds > 1 else ""))
    for name, panels in figures.DATA_SIZE_FIGURES.items():
        figures.plot_against_size(summary, panels, os.path.join(workdir, name + ".png"),
                                     title)
    histories, distances = {}, {}
    for row in rows:
        p = Point(row["n"], row["beta"], row["sigma"])
        run = row["seed"] - base.seed
        directory = report.run_directory(os.path.join(workdir, "runs", p.name), run,
                                         base.num_seeds)
        with open(os.path.join(directory, GAP_FILE)) as f:
            histories.setdefault((p.label, p.n), []).append(json.load(f))
        if run == 0:
            with np.load(os.path.join(directory, claims.DISTANCES_FILE)) as d:
                distances[(p.label, p.n)] = {k: d[k] for k in d.files}
    figures.plot_gap_over_training(histories, os.path.join(workdir,
                                                              "gap_over_training.png"), title)
    figures.plot_nn_distances(distances, os.path.join(workdir, "nn_distances.png"),
                                 f"{base.dataset}: nearest-image distances of "
                                 f"{options.nn_samples} prior samples, seed {base.seed}")


if __name__ == "__main__":
    cli.run(main)
