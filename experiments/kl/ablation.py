"""What does training a VAE without the KL term do? Trains beta = 1 and beta = 0 with the same seed,
architecture and budget, evaluates both on the test set, and writes the comparison.

    python experiments/kl/ablation.py --dataset fashion_mnist --data-dir /path/to/idx-files \\
        --epochs 30 --workdir checkpoints/vae_kl_ablation

With --num-seeds N, each beta trains N runs (seeds --seed, ..., --seed + N - 1) together in
one compiled program, each run measured as a solo run is.

Writes into --workdir:
  ablation.csv, ablation.md   one row per beta: recon, kl, -ELBO, iwae_nll (nats per image),
                              mean_sigma, mu_std, active_units, and the prior-sample quality;
                              with --num-seeds N, ablation.csv has a row per run (its seed
                              column) and ablation.md each figure's mean ± std over the runs
  beta_<b>/                   each model's own run (checkpoints, grids, curves, test_eval.json)
  beta_<b>_latent2/           the same model with a 2-D latent, for the pictures
  latent_scatter.png          test posterior means coloured by class (2-D latent), per beta
  latent_grid.png             the decoder over a grid of [-2, 2]^2 of latent space, per beta
  prior_samples.png           samples from the N(0, I) prior, per beta
  reconstructions.png         test images (odd rows) and reconstructions (even rows), per beta
  claims.csv, claims.md       with --claims: the measurements of claims.py (probes
                              of the latent, I(x; z), train/test gaps, memorisation); an
                              ensemble's in beta_<b>/run<r>/, tabled as ablation.csv/.md are

Every run resumes; rerunning the same command only does what is missing.
"""

import dataclasses
import os
from typing import Callable, Optional, Sequence

import claims  # beside this script
import jax
import numpy as np
import report

from jaxgen import cli, parallel
from jaxgen.config import DISTINCT_NON_NEGATIVE, Check, Settings, setting
from jaxgen.data import Dataset
from jaxgen.errors import JaxgenError
from jaxgen.metrics import frechet_distance_of_features
from jaxgen.runs.restore import draw_samples
from jaxgen.train import vae_eval
from jaxgen.train.vae import PRESETS, VAEConfig
from jaxgen.train.vae_eval import TestEvalOptions
from jaxgen.workdir import ensure_writable, write_atomically


@dataclasses.dataclass(frozen=True)
class AblationOptions(Settings):
    """What the ablation compares, beside the VAE's own settings."""

    betas: tuple[float, ...] = setting((1.0, 0.0), "KL weights to compare",
                                       DISTINCT_NON_NEGATIVE, metavar="B,B")
    picture_latent_dim: int = setting(
        2, "latent size of the companion runs drawn as latent scatter and grid (0 skips them)",
        Check(lambda v: v in (0, 2), "2 (draw the latent space) or 0 (skip)"), metavar="D")
    num_samples: int = report.num_samples_setting("prior samples for the quality figures")
    classifier: Optional[str] = report.classifier_setting(
        "workdir of experiments/train_classifier.py on the same dataset: prior samples are "
        "scored in its feature space (FID, IS, coverage, precision, recall); without it, the "
        "Frechet distance in pixel space")
    claims: bool = setting(False, "also measure what tests the textbook's claims (probes of "
                           "the latent, I(x; z), train/test gaps, memorisation; "
                           "claims.py), as sweeps.py does")
    nn_samples: int = report.nn_samples_setting("with --claims: prior samples whose nearest "
                                                "training and test images are found")


def main() -> None:
    parser = cli.training_parser(__doc__, VAEConfig, exclude=("beta",), presets=PRESETS)
    TestEvalOptions.add_flags(parser, "test-set evaluation after training")
    AblationOptions.add_flags(parser, "the ablation")
    args = cli.parse(parser, presets=PRESETS)

    base = VAEConfig.from_flags(args, beta=1.0)
    options = AblationOptions.from_flags(args)
    test_eval = TestEvalOptions.from_flags(args)
    report.validate(options, test_eval)
    configs = [dataclasses.replace(base, beta=b) for b in options.betas]
    run, train, test = report.start(args, base, configs, "vae_kl_ablation")
    quality = (report.classifier_quality(options.classifier, base.dataset, options.num_samples,
                                         run.options.data_dir, QUALITY, QUALITY_NOTE)
               if options.classifier else pixel_quality(train, options.num_samples))
    run.log(f"KL ablation on {base.dataset}: betas "
            f"{', '.join(f'{b:g}' for b in options.betas)}, {base.epochs} epochs each, "
            f"{run.describe()}")
    run_kl_ablation(configs, train, test, run.workdir, run.mesh, iwae_k=test_eval.iwae_k,
                    eval_images=test_eval.eval_images,
                    picture_latent_dim=options.picture_latent_dim,
                    num_samples=options.num_samples, quality=quality, log=run.log,
                    measure_claims=options.claims, nn_samples=options.nn_samples)


# Columns of ablation.csv, with what each means (written under the table in ablation.md).
COLUMNS = {
    "beta": "weight of the KL term in training (1: the ELBO; 0: reconstruction only)",
    "recon": "test reconstruction error -E_q log p(x|z), nats per image (one sample of z)",
    "kl": "test KL(q(z|x) || N(0, I)), nats per image, measured whatever beta trained the model",
    "neg_elbo": "test -ELBO = recon + kl, nats per image",
    "iwae_nll": "test -log p(x) estimated with k importance samples (Burda et al. 2016), nats",
    "mean_sigma": "encoder std sigma(x), averaged over test images and latent dimensions",
    "mu_std": "std over test images of the posterior means, averaged over dimensions "
              "(the prior's is 1)",
    "active_units": "latent dimensions with Var_x E_q[z_u] > 0.01 (Burda et al.'s criterion)",
}
EVAL_KEYS = ("recon", "kl", "neg_elbo", "iwae_nll", "mean_sigma", "mu_std", "active_units")
# The classifier's columns of prior samples (with --classifier), and what they are.
QUALITY = ("prior_fid", "prior_is", "prior_classes", "prior_precision", "prior_recall")
QUALITY_NOTE = (
    "{num_samples} prior samples scored in the feature space of the classifier in `{classifier}` "
    "(test accuracy {accuracy:.4f}) against {num_samples} training images: `prior_fid` (Frechet "
    "distance, lower is better), `prior_is` (Inception-Score-style, up to 10), `prior_classes` "
    "(classes hit), `prior_precision`, `prior_recall` (k-NN manifolds, k=3). The real-data "
    "floor, {num_samples} test images scored the same way: fid {fid:.3f}, is {inception:.2f}, "
    "classes {classes}, precision {precision:.3f}, recall {recall:.3f}.")


def run_kl_ablation(configs: Sequence[VAEConfig], train: Dataset, test: Dataset,
                    workdir: str, mesh, iwae_k: int = 5000, eval_images: Optional[int] = None,
                    picture_latent_dim: int = 2, num_samples: int = 10000,
                    quality: Optional[tuple[str, claims.QualityFn]] = None,
                    log: Callable[[str], None] = print, measure_claims: bool = False,
                    nn_samples: int = 1000) -> list[dict]:
    """Trains and evaluates one VAE per config (a seed ensemble with ``num_seeds`` > 1);
    returns the table's rows, one per run.

    ``quality`` is (description, fn): fn maps ``num_samples`` prior samples in [-1, 1] to a dict
    of figures added to each row (e.g. the classifier-space metrics of ``jaxgen.metrics``).
    ``measure_claims`` adds the columns of ``claims.py`` (written to ``claims.md``)."""
    if eval_images == 0:
        raise JaxgenError("the ablation compares test-set figures: --eval-images must not be 0.")
    workdir = ensure_writable(workdir)
    rows, claim_rows, main_runs, picture_runs = [], [], {}, {}
    for config in configs:
        label = f"beta={config.beta:g}"
        run_dir = os.path.join(workdir, f"beta_{config.beta:g}")
        log(f"--- {label}, latent {config.latent_dim}: {run_dir}")
        task, state, summary = vae_eval.train_and_evaluate(
            config, train.images, test.images, run_dir, mesh, iwae_k=iwae_k,
            eval_images=eval_images, log=log)
        runs = report.each_run(task, state, summary)
        for r, (one_task, one_state, one_summary) in enumerate(runs):
            seed = {"seed": one_task.config.seed} if len(runs) > 1 else {}
            row = {"beta": config.beta, **seed, **{k: one_summary[k] for k in EVAL_KEYS}}
            if quality is not None:
                samples = draw_samples(one_task, one_state.model, num_samples,
                                       jax.random.PRNGKey(0))
                row.update(quality[1](samples))
            rows.append(row)
            if measure_claims:
                claims_dir = report.run_directory(run_dir, r, len(runs))
                claim_rows.append({"beta": config.beta, **seed, **claims.measure(
                    one_task, one_state, train, test, claims_dir, mesh, summary["epoch"],
                    one_summary, iwae_k, summary["num_images"], nn_samples=nn_samples,
                    num_samples=num_samples, log=log)})
        main_runs[label] = runs[0][:2]  # the pictures: the first run's
        if picture_latent_dim:
            small = dataclasses.replace(config, latent_dim=picture_latent_dim, num_seeds=1)
            small_dir = os.path.join(workdir, f"beta_{config.beta:g}_latent{picture_latent_dim}")
            log(f"--- {label}, latent {picture_latent_dim} (pictures): {small_dir}")
            picture_runs[label] = vae_eval.train_and_evaluate(
                small, train.images, test.images, small_dir, mesh, eval_images=0, log=log)[:2]
    if parallel.is_main_process():
        write_table(rows, workdir, configs[0], quality[0] if quality else None,
                    eval_images or len(test), iwae_k)
        draw_figures(main_runs, picture_runs, test, workdir)
        if measure_claims:
            write_claims(claim_rows, workdir)
        log(format_table(rows))
        log(f"wrote {os.path.join(workdir, 'ablation.md')} and the figures beside it")
    return rows


def pixel_quality(train: Dataset, num_samples: int) -> tuple[str, claims.QualityFn]:
    """The simpler figure when no classifier is given: the Frechet distance between Gaussians
    fitted to prior samples and to training images, in pixel space average-pooled to 7x7 (49
    dimensions, so that a few hundred samples give a well-conditioned covariance)."""
    n = min(num_samples, len(train))
    if n < 50:
        raise JaxgenError(f"--num-samples {num_samples} is too few for the pixel-space Frechet "
                          "distance (49 dimensions); pass at least 50, or --classifier.")
    pick = np.random.RandomState(0).permutation(len(train))[:n]
    real = _pooled(train.images[pick].astype(np.float64) / 127.5 - 1)
    description = (f"`prior_fd_pixels`: Frechet distance between Gaussians fitted to "
                   f"{num_samples} prior samples and {n} training images, in pixel space "
                   "average-pooled to 7x7 (intensities in [-1, 1]; lower is better). Pass "
                   "--classifier for the classifier-space metrics.")

    def score(samples: np.ndarray) -> dict:
        return {"prior_fd_pixels": frechet_distance_of_features(
            _pooled(samples.astype(np.float64)), real)}

    return description, score


def _pooled(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28, 1) -> (N, 49): means of 4x4 blocks."""
    return images.reshape(len(images), 7, 4, 7, 4).mean(axis=(2, 4)).reshape(len(images), 49)


def format_table(rows: list[dict]) -> str:
    """A row per beta; an ensemble's runs (rows with a seed) as each figure's mean ± std."""
    if "seed" not in rows[0]:
        keys = list(rows[0])
        return report.markdown_table(keys, ([f"{row[k]:g}" if k == "beta" else
                                             report.fmt(row[k], digits=4) for k in keys]
                                            for row in rows))
    keys = [k for k in rows[0] if k not in ("beta", "seed")]
    return report.markdown_table(
        ["beta", "runs"] + keys,
        ([f"{s['beta']:g}", str(s["runs"])] + [report.mean_std(s, k, 4, 2) for k in keys]
         for s in report.summarise(rows, ("beta",))))


def write_table(rows: list[dict], workdir: str, config: VAEConfig,
                quality_description: Optional[str], num_images: int, iwae_k: int) -> None:
    report.write_csv(os.path.join(workdir, "ablation.csv"), rows)
    seeds = report.describe_seeds(config)
    if config.num_seeds > 1:
        seeds = (f"{config.num_seeds} runs of {seeds} (mean ± std over the runs; ablation.csv "
                 "has each run's row)")
    setup = (f"{config.dataset}, {config.epochs} epochs, batch {config.batch_size}, {seeds}; "
             f"{config.architecture} {','.join(map(str, config.hidden))} "
             f"{config.activation}, latent {config.latent_dim}, {config.likelihood} likelihood"
             + (f" (sigma {config.sigma})" if config.likelihood == "gaussian" else "")
             + f", K={config.mc_samples}, Adam lr {config.lr}. Test figures on {num_images} "
             f"test images, iwae_nll with k={iwae_k}.")
    columns = report.column_notes(COLUMNS)
    if quality_description:
        columns += f"\n- prior-sample quality: {quality_description}"
    text = f"""# KL ablation

{report.command()}

Setup: {setup}

{format_table(rows)}

{columns}

Figures: `latent_scatter.png`, `latent_grid.png` (2-D latent runs), `prior_samples.png`,
`reconstructions.png`.
"""
    with write_atomically(os.path.join(workdir, "ablation.md")) as f:
        f.write(text)


CLAIM_COLUMNS = ("beta", "rate", "mi", "mi_max", "probe_acc", "nn_acc", "mse_train", "mse_test",
                 "recon_train", "recon_test", "recon_gap", "iwae_train", "iwae_test", "iwae_gap",
                 "d_train", "d_test", "nearer_train")


def write_claims(rows: list[dict], workdir: str) -> None:
    """``claims.csv`` (every measured column) and ``claims.md`` (the claims' columns)."""
    report.write_csv(os.path.join(workdir, "claims.csv"), rows)
    table = format_table([{k: r[k] for k in ("seed",) + CLAIM_COLUMNS if k in r} for r in rows])
    notes = report.column_notes(claims.COLUMNS, only=CLAIM_COLUMNS)
    with write_atomically(os.path.join(workdir, "claims.md")) as f:
        f.write(f"# The claims' measurements\n\n{report.command()}\n\n{table}\n\n{notes}\n")


def draw_figures(main_runs: dict, picture_runs: dict, test: Dataset, workdir: str) -> None:
    report.draw_prior_samples(main_runs, os.path.join(workdir, "prior_samples.png"),
                              "samples from the prior N(0, I)")
    report.draw_reconstructions(main_runs, test.images[:32],
                                os.path.join(workdir, "reconstructions.png"),
                                "test images (odd rows) and reconstructions (even rows)")
    if picture_runs:
        report.draw_latent_space(
            picture_runs, test, workdir, "posterior means of the test images (2-D latent)",
            "decoder means over z in [-2, 2]^2 (where the prior's samples fall)")


if __name__ == "__main__":
    cli.run(main)
