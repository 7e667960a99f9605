"""The KL question for a VAE with a fixed-variance Gaussian decoder and K samples of z: sweeps of
beta, of the decoder's sigma and of K, each point measured for the textbook's claims
(``claims.py``: probes of the latent, I(x; z), train/test gaps, memorisation,
sample quality, the encoder's std over training).

    python experiments/kl/sweeps.py --dataset fashion_mnist --data-dir /path/to/idx-files \\
        --epochs 10 --classifier checkpoints/classifier_fashion_mnist \\
        --workdir checkpoints/vae_gaussian

The sweeps: beta in --betas at --sigma and --mc-samples; sigma in --sigmas at beta =
--sigma-sweep-beta; K in --mc-samples-sweep at each beta of --k-sweep-betas. A point shared by
two sweeps is trained once. Writes into --workdir:
  runs/beta<b>_sigma<s>_K<k>/  each run (checkpoints, grids, curves, test_eval.json,
                               train_eval.json, claims.json); ..._latent2/ the 2-D latent runs
  beta_sweep.{csv,md,png}, sigma_sweep.{csv,md,png}, mc_samples_sweep.{csv,md,png}
                               one table and one figure per sweep
  rate_distortion.png          every run of the beta and sigma sweeps on the (rate, distortion)
                               plane
  encoder_sigma.png            the encoder's std over training, one line per beta (and per K)
  latent_scatter.png, latent_grid.png, prior_samples.png, reconstructions.png,
  nearest_images.png           pictures of the runs at --picture-betas
  sweeps.md                    every table, the command and the setup

--num-seeds N trains each point's N runs (seeds --seed, ..., --seed + N - 1) together in one
compiled program and measures each as a solo run: the CSVs have a row per run (its seed), the
tables and figures each measurement's mean ± std over the runs, encoder_sigma.png the runs'
mean curve, the pictures the first run (the 2-D latent runs train one seed); each run's
claims.json is in run<r>/ of its point's folder.

--sweep beta|sigma|mc-samples trains and measures that sweep's runs only (e.g. two processes at
once); --sweep all (the default) then reads them back and writes everything. Every run resumes;
rerunning the same command only does what is missing.
"""

import dataclasses
import os
from typing import Optional

import claims  # beside this script
import figures
import numpy as np
import report

from jaxgen import cli, parallel, viz
from jaxgen.config import (
                           DISTINCT_NON_NEGATIVE,
                           NON_NEGATIVE,
                           POSITIVE_INT,
                           Check,
                           Settings,
                           setting,
)
from jaxgen.data import Dataset
from jaxgen.metrics import probes
from jaxgen.train import vae_eval
from jaxgen.train.vae import VAEConfig, interleave_rows
from jaxgen.train.vae_eval import TestEvalOptions
from jaxgen.workdir import ensure_writable, write_atomically

DISTINCT_POSITIVE = Check(lambda v: len(v) > 0 and len(set(v)) == len(v) and all(w > 0 for w in v),
                          "distinct positive numbers such as 0.1,1")
DISTINCT_POSITIVE_INTS = Check(
    lambda v: len(v) > 0 and len(set(v)) == len(v)
    and all(isinstance(w, int) and w >= 1 for w in v), "distinct positive integers such as 1,5")
SWEEPS = ("all", "beta", "sigma", "mc-samples")


@dataclasses.dataclass(frozen=True)
class SweepOptions(Settings):
    """What the sweeps vary, beside the VAE's own settings (--sigma and --mc-samples are the
    values the other sweeps hold fixed)."""

    betas: tuple[float, ...] = setting((0.0, 0.1, 0.5, 1.0, 2.0),
                                       "KL weights of the beta sweep", DISTINCT_NON_NEGATIVE,
                                       metavar="B,B")
    sigmas: tuple[float, ...] = setting((0.05, 0.1, 0.2, 0.5, 1.0),
                                        "decoder stds of the sigma sweep", DISTINCT_POSITIVE,
                                        metavar="S,S")
    sigma_sweep_beta: float = setting(1.0, "beta of the sigma sweep", NON_NEGATIVE, metavar="B")
    mc_samples_sweep: tuple[int, ...] = setting((1, 5, 20), "K values of the K sweep",
                                                DISTINCT_POSITIVE_INTS, metavar="K,K")
    k_sweep_betas: tuple[float, ...] = setting((0.0, 1.0), "betas of the K sweep",
                                               DISTINCT_NON_NEGATIVE, metavar="B,B")
    k_sweep_epochs: Optional[int] = setting(None, "epochs of the K sweep's runs (default: "
                                            "--epochs; K = 20 costs about ten K = 1 runs)",
                                            POSITIVE_INT, metavar="N")
    picture_betas: tuple[float, ...] = setting((0.0, 1.0), "betas drawn (at --sigma and "
                                               "--mc-samples), each also with a 2-D latent",
                                               DISTINCT_NON_NEGATIVE, metavar="B,B")
    sweep: str = setting("all", "the sweep to train and measure (all: every sweep, then every "
                         "table and figure)", choices=SWEEPS)
    nn_samples: int = report.nn_samples_setting("prior samples whose nearest training and test "
                                                "images are found (memorisation)")
    num_samples: int = report.num_samples_setting()
    classifier: Optional[str] = report.classifier_setting()


def main() -> None:
    parser = cli.training_parser(__doc__, VAEConfig, exclude=("beta",),
                                 defaults={"likelihood": "gaussian", "epochs": 10})
    TestEvalOptions.add_flags(parser, "test-set evaluation after training (and as many "
                                      "training images)")
    SweepOptions.add_flags(parser, "the sweeps")
    args = cli.parse(parser)

    base = VAEConfig.from_flags(args, beta=1.0)
    options = SweepOptions.from_flags(args)
    test_eval = TestEvalOptions.from_flags(args)
    report.validate(options, test_eval, base,
                    gaussian="for the sweeps (the sigma sweep varies its std); the Bernoulli "
                             "model is ablation.py's",
                    compares="the sweeps compare test-set figures")
    sweeps = sweep_points(base, options)
    run, train, test = report.start(args, base, {c for points in sweeps.values() for c in points},
                                    "vae_gaussian")
    n_eval = len(test) if test_eval.eval_images is None else min(test_eval.eval_images, len(test))
    quality = report.classifier_quality(options.classifier, base.dataset, options.num_samples,
                                        run.options.data_dir)
    chosen = SWEEPS[1:] if options.sweep == "all" else (options.sweep,)
    run.log(f"Sweeps {', '.join(chosen)} on {base.dataset}, {base.epochs} epochs each, "
            f"{run.describe()}")
    workdir = ensure_writable(run.workdir)
    measured = {}
    for name in chosen:
        for config in sweeps[name]:
            if config not in measured:
                measured[config] = train_and_measure(config, train, test, workdir, run.mesh,
                                                     test_eval.iwae_k, n_eval, options, quality,
                                                     run.log, base.epochs)
        if name == "beta":
            for beta in options.picture_betas:
                small = picture_config(base, beta)
                vae_eval.train_and_evaluate(small, train.images, test.images,
                                            run_dir(workdir, small), run.mesh, eval_images=0,
                                            log=run.log)
        if parallel.is_main_process():
            write_sweep(name, [row for c in sweeps[name] for row in measured[c]], workdir,
                        base, n_eval, test_eval.iwae_k, quality)
    if options.sweep == "all" and parallel.is_main_process():
        write_summary(sweeps, measured, workdir, base, options, train, test, run.mesh, n_eval,
                      test_eval.iwae_k, quality)
        run.log(f"wrote {os.path.join(workdir, 'sweeps.md')} and the figures beside it")


def sweep_points(base: VAEConfig, options: SweepOptions) -> dict[str, list[VAEConfig]]:
    """The configs of each sweep, in order."""
    k0 = base.mc_samples
    k_epochs = options.k_sweep_epochs or base.epochs

    def point(beta, sigma=base.sigma, k=k0, epochs=base.epochs):
        return dataclasses.replace(base, beta=float(beta), sigma=float(sigma), mc_samples=int(k),
                                   epochs=epochs)

    return {
        "beta": [point(b) for b in options.betas],
        "sigma": [point(options.sigma_sweep_beta, s) for s in options.sigmas],
        "mc-samples": [point(b, k=k, epochs=k_epochs) for b in options.k_sweep_betas
                       for k in options.mc_samples_sweep],
    }


def picture_config(base: VAEConfig, beta: float) -> VAEConfig:
    """The 2-D latent run drawn beside the run of ``beta``: one seed, ``--seed``."""
    return dataclasses.replace(base, beta=beta, latent_dim=2, num_seeds=1)


def run_dir(workdir: str, config: VAEConfig, epochs: Optional[int] = None) -> str:
    """``runs/beta<b>_sigma<s>_K<k>``, with ``_epochs<n>`` when the run's epochs are not the
    sweeps' ``epochs`` (the K sweep's own budget) and ``_latent2`` for a 2-D latent."""
    name = f"beta{config.beta:g}_sigma{config.sigma:g}_K{config.mc_samples}"
    if epochs is not None and config.epochs != epochs:
        name += f"_epochs{config.epochs}"
    if config.latent_dim == 2:
        name += "_latent2"
    return os.path.join(workdir, "runs", name)


def train_and_measure(config: VAEConfig, train: Dataset, test: Dataset, workdir: str, mesh,
                      iwae_k: int, n_eval: int, options: SweepOptions, quality, log,
                      epochs: int) -> list[dict]:
    """Trains (or resumes) the runs of one point and measures each; their table rows (with the
    seed when there are several)."""
    directory = run_dir(workdir, config, epochs)
    log(f"--- beta={config.beta:g}, sigma={config.sigma:g}, K={config.mc_samples}: {directory}")
    task, state, summary = vae_eval.train_and_evaluate(
        config, train.images, test.images, directory, mesh, iwae_k=iwae_k, eval_images=n_eval,
        log=log)
    runs = report.each_run(task, state, summary)
    rows = []
    for r, (one_task, one_state, one_summary) in enumerate(runs):
        row = claims.measure(one_task, one_state, train, test,
                             report.run_directory(directory, r, len(runs)), mesh,
                             summary["epoch"], one_summary, iwae_k, n_eval,
                             nn_samples=options.nn_samples, num_samples=options.num_samples,
                             quality=quality, log=log)
        seed = {"seed": one_task.config.seed} if len(runs) > 1 else {}
        rows.append({"beta": config.beta, "sigma": config.sigma, "K": config.mc_samples,
                     "epochs": config.epochs, **seed,
                     "beta_eff": config.beta * 2 * config.sigma ** 2, **row})
    return rows


# ------------------------------------------------------------------------------ tables
TABLES = [
    ("the latent", ["rate", "mi", "mi_max", "marginal_kl", "probe_acc", "nn_acc",
                    "active_units", "mean_sigma"]),
    ("the fit, training against test images", ["mse_train", "mse_test", "recon_train",
                                                "recon_test", "recon_gap", "iwae_train",
                                                "iwae_test", "iwae_gap"]),
    ("prior samples", ["d_train", "d_test", "nearer_train", "nearer_train_se", "prior_fid",
                       "prior_precision", "prior_recall", "prior_classes"]),
]
KEYS = ("beta", "sigma", "K", "epochs")


def markdown_tables(rows: list[dict]) -> str:
    """The tables of ``TABLES``, a row per point; several runs of a point (rows with a seed) as
    each measurement's mean ± std over them, with their number."""
    several = "seed" in rows[0]
    entries = report.summarise(rows, KEYS) if several else rows
    head = list(KEYS) + (["runs"] if several else [])
    parts = []
    for title, columns in TABLES:
        columns = [c for c in columns if c in rows[0]]
        table = report.markdown_table(
            head + columns,
            ([f"{e[k]:g}" for k in head] + [report.mean_std(e, c) if several else
                                            report.fmt(e[c]) for c in columns]
             for e in entries))
        parts.append(f"**{title}**\n\n{table}")
    return "\n\n".join(parts)


def point_means(rows: list[dict]) -> list[dict]:
    """A row per point: its runs' means (with ``<column>_std`` when there are several)."""
    return report.summarise(rows, KEYS) if "seed" in rows[0] else rows


def describe_setup(config: VAEConfig, n_eval: int, iwae_k: int) -> str:
    seeds = report.describe_seeds(config)
    if config.num_seeds > 1:
        seeds = (f"{config.num_seeds} runs a point, {seeds} (mean ± std over the runs; the "
                 "CSVs have each run's row)")
    return (f"{config.dataset}, {config.epochs} epochs, batch {config.batch_size}, {seeds}; "
            f"{config.architecture} 784-{'-'.join(map(str, config.hidden))}-"
            f"{config.latent_dim} {config.activation}, Gaussian decoder of fixed std sigma on "
            f"intensities in [0, 1], Adam lr {config.lr}. Train and test figures on the first "
            f"{n_eval} images of each split (iwae with k={iwae_k}); probes, I(x; z) and the "
            f"rate on the whole test set; probes fitted on the whole training set.")


COLUMN_NOTES = {**claims.COLUMNS,
                "mi_max": "log N, the most the I(x; z) estimate can say (N test images)"}

SWEEP_TITLES = {"beta": "beta sweep", "sigma": "sigma sweep", "mc-samples": "K sweep"}
SWEPT = {"beta": ("beta", None), "sigma": ("sigma", None), "mc-samples": ("K", "beta")}


def write_sweep(name: str, rows: list[dict], workdir: str, config: VAEConfig, n_eval: int,
                iwae_k: int, quality) -> None:
    stem = os.path.join(workdir, name.replace("-", "_") + "_sweep")
    report.write_csv(stem + ".csv", rows)
    notes = report.column_notes(COLUMN_NOTES)
    if quality:
        notes += f"\n- prior-sample quality: {quality[0]}"
    with write_atomically(stem + ".md") as f:
        f.write(f"# {SWEEP_TITLES[name]}\n\n{report.command()}\n\n"
                f"Setup: {describe_setup(config, n_eval, iwae_k)}\n\n{markdown_tables(rows)}"
                f"\n\n{notes}\n")
    swept, group = SWEPT[name]
    figures.plot_sweep(point_means(rows), swept, stem + ".png", f"{SWEEP_TITLES[name]}: "
                          f"{config.dataset}, Gaussian decoder, {config.epochs} epochs",
                          group=group)


def write_summary(sweeps: dict, measured: dict, workdir: str, base: VAEConfig,
                  options: SweepOptions, train: Dataset, test: Dataset, mesh, n_eval: int,
                  iwae_k: int, quality) -> None:
    """Every table in sweeps.md; the rate-distortion plane, the encoder std curves and the
    pictures of the runs at --picture-betas."""
    text = [f"# The KL question with a Gaussian decoder\n\n{report.command()}"
            f"\n\nSetup: {describe_setup(base, n_eval, iwae_k)}"]
    for name, configs in sweeps.items():
        rows = [row for c in configs for row in measured[c]]
        text.append(f"## {SWEEP_TITLES[name]}\n\n{markdown_tables(rows)}")
    notes = report.column_notes(COLUMN_NOTES)
    real = claims.memorisation_baseline(train, test, options.nn_samples)
    notes += (f"\n- the memorisation columns for {options.nn_samples} real images (the last "
              f"training images, not among the references): d_train {real['d_train']:.3f}, "
              f"d_test {real['d_test']:.3f}, nearer_train {real['nearer_train']:.3f}")
    text.append("## Columns\n\n" + notes + (f"\n- prior-sample quality: {quality[0]}"
                                             if quality else ""))
    with write_atomically(os.path.join(workdir, "sweeps.md")) as f:
        f.write("\n\n".join(text) + "\n")

    means = {c: point_means(rows)[0] for c, rows in measured.items()}
    series = {}
    for name, label in (("beta", "beta sweep (sigma={s:g}), label: beta"),
                        ("sigma", "sigma sweep (beta={b:g}), label: sigma")):
        key = SWEPT[name][0]
        series[label.format(s=base.sigma, b=options.sigma_sweep_beta)] = [
            (means[c]["rate"], means[c]["mse_test"], f"{means[c][key]:g}")
            for c in sweeps[name]]
    figures.plot_rate_distortion(series, os.path.join(workdir, "rate_distortion.png"),
                                    f"{base.dataset}, Gaussian decoder, K={base.mc_samples}, "
                                    f"{base.epochs} epochs (Alemi et al. 2018)"
                                    + ("" if base.num_seeds == 1 else
                                       f"; means of {base.num_seeds} runs"))
    steps_per_epoch = len(train) // base.batch_size
    curves = {f"beta={c.beta:g}": claims.sigma_history(run_dir(workdir, c))
              for c in sweeps["beta"]}
    curves.update({f"beta={c.beta:g}, K={c.mc_samples} ({c.epochs} epochs)":
                   claims.sigma_history(run_dir(workdir, c, base.epochs))
                   for c in sweeps["mc-samples"] if c.mc_samples != base.mc_samples})
    figures.plot_sigma_curves(curves, steps_per_epoch,
                                 os.path.join(workdir, "encoder_sigma.png"),
                                 f"encoder std over training, sigma={base.sigma:g}"
                                 + ("" if base.num_seeds == 1 else
                                    f", the mean of {base.num_seeds} runs"))
    draw_pictures(base, options.picture_betas, workdir, train, test, mesh)


def _restore(config: VAEConfig, workdir: str, train: Dataset, test: Dataset, mesh):
    """The trained run of ``config`` (its checkpoint, nothing trained: the run is complete); of
    an ensemble, its first run."""
    task, state, _ = vae_eval.train_and_evaluate(config, train.images, test.images,
                                                 run_dir(workdir, config), mesh, eval_images=0,
                                                 log=lambda _: None)
    return report.each_run(task, state, None)[0][:2]


def draw_pictures(base: VAEConfig, betas, workdir: str, train: Dataset, test: Dataset,
                  mesh) -> None:
    runs = {f"beta={b:g}": _restore(dataclasses.replace(base, beta=b), workdir, train, test,
                                    mesh) for b in betas}
    small = {f"beta={b:g}": _restore(picture_config(base, b), workdir, train, test, mesh)
             for b in betas}
    title = f"sigma={base.sigma:g}, K={base.mc_samples}"
    samples = report.draw_prior_samples(runs, os.path.join(workdir, "prior_samples.png"),
                                        f"decoder means at z ~ N(0, I), {title}")
    report.draw_reconstructions(
        runs, test.images[:32], os.path.join(workdir, "reconstructions.png"),
        f"test images (odd rows) and decoder means at the posterior means (even rows), {title}")
    pairs = {}
    for label, images in samples.items():
        shown = images[:16]
        flat = (shown.reshape(16, -1) + 1) / 2
        index, _ = probes.nearest_neighbours(flat, train.images.reshape(len(train), -1) / 255.0)
        nearest = train.images[index].astype(np.float32) / 127.5 - 1
        pairs[label] = interleave_rows(shown, nearest, ncols=8)
    viz.save_image_panels(pairs, os.path.join(workdir, "nearest_images.png"), ncols=8,
                          title="prior samples (odd rows) and their nearest training images "
                                "(even rows)")
    report.draw_latent_space(
        small, test, workdir, f"posterior means of the test images, 2-D latent, {title}",
        f"decoder means over z in [-2, 2]^2 (where prior samples fall), 2-D latent, {title}")


if __name__ == "__main__":
    cli.run(main)
