"""A trained VAE measured on the test set, in nats per image.

The 1-sample reconstruction term and the KL (so the -ELBO, the beta = 1 bound, whatever beta
trained the model), the importance-weighted bound on -log p(x) with k samples (Burda et al. 2016),
the squared error of the decoder's mean (the distortion of a rate-distortion plane, whatever the
likelihood), the encoder's mean std and the active units (Burda et al.'s criterion: latent
dimensions whose posterior mean varies across the data, Var_x E_q[z_u] > 0.01).
``train_and_evaluate`` trains (or resumes) a run and writes these figures to ``test_eval.json``,
reused when already written; ``evaluate_cached`` does the same for any split."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxgen import losses, parallel
from jaxgen.config import NON_NEGATIVE_INT, POSITIVE_INT, Settings, setting
from jaxgen.errors import JaxgenError
from jaxgen.metrics.evaluator import summarise_runs
from jaxgen.train import ensemble, loop
from jaxgen.train.state import TrainState
from jaxgen.train.vae import VAEConfig, VAETask, fixed_targets
from jaxgen.workdir import write_atomically

ACTIVE_UNIT_THRESHOLD = 1e-2  # Burda et al. (2016), section 5.2


@dataclasses.dataclass(frozen=True)
class TestEvalOptions(Settings):
    """How the test-set evaluation after training is made."""

    iwae_k: int = setting(5000, "importance samples for the test -log p(x) bound", POSITIVE_INT,
                          metavar="K")
    eval_images: Optional[int] = setting(None, "evaluate on the first N test images (0: skip; "
                                         "unset: all)", NON_NEGATIVE_INT, metavar="N")


def _chunk_size(k: int, limit: int = 500) -> int:
    """The largest divisor of k not above ``limit``: the samples of z decoded at once."""
    return max(d for d in range(1, min(k, limit) + 1) if k % d == 0)


@functools.lru_cache(maxsize=4)
def build_evaluator(task: VAETask, mesh, iwae_k: int):
    """``evaluate(params, x, key) -> per-image dict`` on a batch of targets x sharded over the
    mesh: the 1-sample reconstruction log-likelihood, the KL, the posterior mean and std, and the
    k-sample importance-weighted bound, accumulated in chunks of samples (a running logsumexp)."""
    chunk = _chunk_size(iwae_k)
    repl = parallel.replicated(mesh)

    def evaluate(params, x, key):
        x = parallel.shard_batch(x)
        mu, log_var = task.encode(params, x)
        recon_key, iwae_key = jax.random.split(key)
        eps = parallel.shard_batch(jax.random.normal(recon_key, (x.shape[0], 1, mu.shape[-1])))
        decoded = task.decode(params, task.reparameterise(mu, log_var, eps))
        log_lik = task.log_likelihood(x[:, None], decoded)[:, 0]
        sq_err = jnp.sum(jnp.square(x - task.decoder_mean(decoded)[:, 0]), axis=(1, 2, 3))

        def add_chunk(running, i):
            eps = jax.random.normal(jax.random.fold_in(iwae_key, i),
                                    (x.shape[0], chunk, mu.shape[-1]))
            z = task.reparameterise(mu, log_var, parallel.shard_batch(eps))
            log_w = (task.log_likelihood(x[:, None], task.decode(params, z))
                     + losses.standard_normal_log_density(z)
                     - losses.diagonal_gaussian_log_density(z, mu[:, None], log_var[:, None]))
            return jnp.logaddexp(running, jax.scipy.special.logsumexp(log_w, axis=1)), None

        lse, _ = lax.scan(add_chunk, jnp.full(x.shape[:1], -jnp.inf), jnp.arange(iwae_k // chunk))
        return {"log_lik": log_lik, "kl": losses.gaussian_kl_to_standard(mu, log_var),
                "sq_err": sq_err, "mu": mu, "log_var": log_var, "sigma": jnp.exp(0.5 * log_var),
                "iwae": lse - math.log(iwae_k)}

    return jax.jit(evaluate, in_shardings=(repl, repl, repl), out_shardings=repl,
                   compiler_options=parallel.compiler_options(mesh))


def evaluate(task: VAETask, params, images: np.ndarray, mesh, iwae_k: int = 5000,
             seed: int = 0, batch_size: int = 100, log=None) -> tuple[dict, dict]:
    """Test-set figures of a trained VAE on uint8 ``images``, in nats per image.

    Returns (summary, per_image). The summary has ``neg_elbo`` (-ELBO, the beta = 1 bound, whatever
    beta trained the model), ``recon`` (-E_q log p(x|z), one sample of z), ``kl``, ``iwae_nll``
    (-log p(x) estimated with ``iwae_k`` importance samples: an upper bound that tightens with k),
    ``mse`` (per pixel, the decoder's mean at one z ~ q against x), ``mean_sigma`` (the encoder's
    std averaged over images and dimensions), ``active_units``. For a Gaussian decoder ``recon``
    and ``iwae_nll`` are densities of continuous pixels (with the -D log sigma - D/2 log 2 pi
    constant), not probabilities: they do not compare with a Bernoulli decoder's nats.
    A Bernoulli model sees the test set binarised once with ``seed``, the same for every model.
    """
    if iwae_k < 1:
        raise JaxgenError(f"--iwae-k must be a positive integer, got {iwae_k}.")
    n = len(images)
    if n < 2:
        raise JaxgenError(f"evaluation needs at least 2 test images, got {n}.")
    key = jax.random.PRNGKey(seed)
    step = mesh.size * -(-batch_size // mesh.size)  # a multiple of the device count
    evaluator = build_evaluator(task, mesh, iwae_k)
    targets = fixed_targets(task, images, seed)
    parts = []
    with jax.set_mesh(mesh):
        for i, start in enumerate(range(0, n, step)):
            x = targets[start:start + step]
            real = len(x)
            if real < step:  # pad the last batch to the sharded size; the padding is dropped
                x = np.concatenate([x, np.repeat(x[-1:], step - real, axis=0)])
            out = parallel.to_host(evaluator(params, x, jax.random.fold_in(key, i)))
            parts.append({k: v[:real] for k, v in out.items()})
            if log and (i + 1) % 10 == 0:
                log(f"  evaluated {start + real}/{n} test images")
    per_image = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    mu_variance = per_image["mu"].astype(np.float64).var(axis=0)
    summary = {
        "neg_elbo": float(np.mean(per_image["kl"] - per_image["log_lik"])),
        "recon": float(-np.mean(per_image["log_lik"])),
        "kl": float(np.mean(per_image["kl"])),
        "iwae_nll": float(-np.mean(per_image["iwae"])),
        "iwae_k": iwae_k,
        # The distortion in the targets' units, whatever the likelihood: the squared distance
        # between x and the decoder's mean at the same z as ``recon``, per pixel.
        "mse": float(np.mean(per_image["sq_err"]) / np.prod(targets.shape[1:])),
        "mean_sigma": float(np.mean(per_image["sigma"])),
        # The spread of the posterior means over the data (mean over dimensions of their std):
        # the scale of the latent space the decoder learnt, next to the prior's 1.
        "mu_std": float(np.mean(np.sqrt(mu_variance))),
        "active_units": int(np.sum(mu_variance > ACTIVE_UNIT_THRESHOLD)),
        "latent_dim": task.config.latent_dim,
        "num_images": n,
    }
    return summary, per_image


def write_evaluation(workdir: str, summary: dict, epoch: int, split: str = "test") -> str:
    path = os.path.join(workdir, f"{split}_eval.json")
    with write_atomically(path) as f:
        json.dump({**summary, "epoch": epoch}, f, indent=2)
    return path


def read_evaluation(workdir: str, split: str = "test") -> Optional[dict]:
    path = os.path.join(workdir, f"{split}_eval.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def evaluate_cached(task: VAETask, params, images: np.ndarray, workdir: str, epoch: int, mesh,
                    iwae_k: int = 5000, split: str = "test", log=print) -> dict:
    """``evaluate`` on ``images`` (uint8) written to ``<split>_eval.json`` in ``workdir``, or read
    from it when it holds the same epoch, k and number of images."""
    n = len(images)
    cached = read_evaluation(workdir, split)
    if cached and "mse" in cached and (cached.get("epoch"), cached.get("iwae_k"),
                                       cached.get("num_images")) == (epoch, iwae_k, n):
        log(f"{split.capitalize()}-set evaluation of epoch {epoch} read from "
            f"{workdir}/{split}_eval.json.")
        return cached
    log(f"Evaluating on {n} {split} images (importance-weighted bound with k={iwae_k})...")
    runs = ensemble.num_runs(task)
    if runs == 1:
        summary, _ = evaluate(task, params, images, mesh, iwae_k=iwae_k, log=log)
    else:  # a seed ensemble: each run's figures, and their mean and spread
        per_run = []
        for r in range(runs):
            run_summary, _ = evaluate(task, ensemble.run_state(params, r), images, mesh,
                                      iwae_k=iwae_k, log=log)
            per_run.append({"run": r, "seed": task.config.seed + r, **run_summary})
            log(f"run {r}: " + format_evaluation(run_summary, split))
        summary = {**per_run[0], **summarise_runs(per_run, RUN_FIGURES), "runs": per_run}
        del summary["run"], summary["seed"]
    summary = {"epoch": epoch, **summary}
    if parallel.is_main_process():
        write_evaluation(workdir, summary, epoch, split)
    log(format_evaluation(summary, split))
    return summary


def train_and_evaluate(config: VAEConfig, train_images: np.ndarray, test_images: np.ndarray,
                       workdir: str, mesh, iwae_k: int = 5000, eval_images: Optional[int] = None,
                       epoch_hooks=(), log=print,
                       profile_steps=None) -> tuple[VAETask, TrainState, Optional[dict]]:
    """Trains (or resumes) a VAE run in ``workdir``, then evaluates it on the first
    ``eval_images`` test images (default all; 0 skips) and writes ``test_eval.json``. An
    evaluation already written for the same epoch and settings is reused. ``profile_steps`` as
    ``loop.train``'s."""
    steps_per_epoch = len(train_images) // config.batch_size
    task = VAETask(config, steps_per_epoch=steps_per_epoch, display_images=test_images)
    state, history = loop.train(task, train_images, workdir, mesh, log=log,
                                epoch_hooks=epoch_hooks, profile_steps=profile_steps)
    n = len(test_images) if eval_images is None else min(eval_images, len(test_images))
    if n == 0:
        return task, state, None
    epoch = len(history.per_epoch_time)
    summary = evaluate_cached(task, state.model.params, test_images[:n], workdir, epoch, mesh,
                              iwae_k=iwae_k, log=log)
    return task, state, summary


# The figures of a run that differ from run to run (an ensemble's mean ± std).
RUN_FIGURES = ("neg_elbo", "recon", "kl", "iwae_nll", "mse", "mean_sigma", "mu_std",
               "active_units")


def format_evaluation(s: dict, split: str = "test") -> str:
    """One line of a test-set evaluation (an ensemble's: the mean over its runs)."""
    runs = f" (mean of {len(s['runs'])} runs)" if "runs" in s else ""
    return (f"{split}{runs}, nats per image: -ELBO {s['neg_elbo']:.2f} = recon "
            f"{s['recon']:.2f} + KL {s['kl']:.2f}; -log p(x) <= {s['iwae_nll']:.2f} "
            f"(k={s['iwae_k']}); mean encoder std {s['mean_sigma']:.4g}; std of posterior "
            f"means {s['mu_std']:.3g}; active units {s['active_units']:g}/{s['latent_dim']} "
            f"({s['num_images']} images)")
