"""The measurements that test what a textbook says a VAE trained without the KL term does.

For one trained VAE (``measure``), beside the test-set figures of ``jaxgen.train.vae_eval``:

- informativeness of the latent: the test accuracy of a linear probe (logistic regression fitted
  on the training set's posterior means) and of 1-NN on the posterior means; the mutual information
  I(x; z) under q on the test set (``jaxgen.metrics.probes``: x uniform on the N test images, at
  most log N);
- overfitting: reconstruction error, squared error and importance-weighted bound on training
  and test images side by side (the same number of each), and their gaps (test - train);
- memorisation: for prior samples, the distance to the nearest of M training images against the
  distance to the nearest of M test images (M = the test set's size, so that the two sets are
  alike but for having been trained on); without memorisation half the samples are nearer a
  training image (``nearer_train`` = 0.5);
- sample quality: the caller's scores of prior samples (FID, precision, recall, classes).

The figures are written once per run to ``claims.json`` beside the checkpoints and read back when
the run, its epoch and the measuring options are the same.
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable, Optional

import jax
import numpy as np

from jaxgen import parallel
from jaxgen.data import Dataset
from jaxgen.losses import LOG_2PI
from jaxgen.metrics import probes
from jaxgen.runs import latents
from jaxgen.runs.restore import draw_samples
from jaxgen.train import vae_eval
from jaxgen.train.vae import VAETask
from jaxgen.workdir import write_atomically

CLAIMS_FILE = "claims.json"
DISTANCES_FILE = "nn_distances.npz"  # with held-out images: every nearest-image distance
QualityFn = Callable[[np.ndarray], dict]

# What each column of a claims table means (nats are per image).
COLUMNS = {
    "rate": "KL(q(z|x) || N(0, I)) on the test set, nats (the rate of Alemi et al. 2018)",
    "mi": "I(x; z) under q, x uniform on the test set (at most log N = `mi_max`), nats",
    "marginal_kl": "KL(q(z) || N(0, I)) = rate - mi: how far the aggregate posterior is from "
                   "the prior, nats",
    "probe_acc": "test accuracy of logistic regression on the posterior means (fitted on the "
                 "training set's)",
    "nn_acc": "test accuracy of 1-NN on the posterior means (the training set's as memory)",
    "active_units": "latent dimensions with Var_x E_q[z_u] > 0.01",
    "mean_sigma": "encoder std, mean over test images and latent dimensions",
    "mse_train": "squared error per pixel, decoder mean at one z ~ q(z|x) against x (training)",
    "mse_test": "the same on test images",
    "recon_train": "-log p(x|z), one z ~ q(z|x), training images, nats",
    "recon_test": "the same on test images",
    "recon_gap": "recon_test - recon_train",
    "iwae_train": "-log p(x) bound with k importance samples, training images, nats",
    "iwae_test": "the same on test images",
    "iwae_gap": "iwae_test - iwae_train",
    "d_train": "prior sample's distance to the nearest training image (of M), mean, [0, 1] pixels",
    "d_test": "prior sample's distance to the nearest test image (of M), mean",
    "nearer_train": "fraction of prior samples nearer a training image than any test image "
                    "(0.5: no memorisation)",
    "nearer_train_se": "its binomial standard error, sqrt(p (1 - p) / samples)",
}


def rate_of(mu: np.ndarray, log_var: np.ndarray) -> float:
    """Mean KL(N(mu, exp(log_var)) || N(0, I)) over rows, float64."""
    mu, log_var = np.asarray(mu, np.float64), np.asarray(log_var, np.float64)
    return float(np.mean(0.5 * np.sum(np.exp(log_var) + mu ** 2 - 1 - log_var, axis=1)))


def nearest_image_distances(samples: np.ndarray, train_images: np.ndarray,
                            test_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's (in [-1, 1]) distance to the nearest of M training and of M test images
    (uint8; the first M of each, M the smaller count), in [0, 1] intensity units."""
    m = min(len(train_images), len(test_images))
    flat = (np.asarray(samples, np.float32).reshape(len(samples), -1) + 1.0) / 2.0
    train = train_images[:m].reshape(m, -1).astype(np.float32) / 255.0
    test = test_images[:m].reshape(m, -1).astype(np.float32) / 255.0
    return probes.nearest_distances(flat, train), probes.nearest_distances(flat, test)


def memorisation(samples: np.ndarray, train_images: np.ndarray,
                 test_images: np.ndarray) -> dict:
    """Mean distances of samples to the nearest of as many training as test images
    (``nearest_image_distances``), and ``nearer_train``, the fraction nearer a training image,
    with its binomial standard error ``nearer_train_se``."""
    d_train, d_test = nearest_image_distances(samples, train_images, test_images)
    return {**summarise_distances(d_train, d_test),
            "nn_references": min(len(train_images), len(test_images))}


def summarise_distances(d_train: np.ndarray, d_test: np.ndarray) -> dict:
    p = float(np.mean(d_train < d_test))
    return {"d_train": float(d_train.mean()), "d_test": float(d_test.mean()),
            "nearer_train": p, "nearer_train_se": math.sqrt(p * (1 - p) / len(d_train))}


def held_out_split(num_test: int, held_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out, reference) indices of the test split: ``held_out`` images drawn by a fixed
    permutation (seed 0), so that both parts are alike whatever the split's order (MNIST's test
    split is ordered by writer group); each part in the split's order."""
    order = np.random.RandomState(0).permutation(num_test)
    return np.sort(order[:held_out]), np.sort(order[held_out:])


def memorisation_baseline(train: Dataset, test: Dataset, n: int = 1000) -> dict:
    """``memorisation`` of n real images: the last n training images, which are not among the
    references (the first len(test) training images). Their ``nearer_train`` is what a model
    that draws from the data distribution, memorising nothing, would score (0.5 up to noise)."""
    real = train.images[-n:].astype(np.float32) / 127.5 - 1.0
    return memorisation(real, train.images, test.images)


def informativeness(task: VAETask, params, train: Dataset, test: Dataset, seed: int = 0) -> dict:
    """The probes on the posterior means and I(x; z) on the test set."""
    train_mu = latents.encode_means(task, params, train.images)
    test_mu, test_log_var = latents.encode_posteriors(task, params, test.images)
    probe = probes.linear_probe(train_mu, train.labels, test_mu, test.labels)
    mi = probes.aggregate_posterior_mutual_information(test_mu, test_log_var, seed=seed)
    rate = rate_of(test_mu, test_log_var)
    return {"probe_acc": probe["test_accuracy"], "probe_train_acc": probe["train_accuracy"],
            "nn_acc": probes.nearest_neighbour_accuracy(train_mu, train.labels, test_mu,
                                                        test.labels),
            "mi": mi["mi"], "mi_stderr": mi["mi_stderr"], "mi_max": mi["log_n"],
            "rate_full_test": rate, "marginal_kl": rate - mi["mi"]}


def gaussian_constant(task: VAETask) -> Optional[float]:
    """-log p(x|z) of a perfect reconstruction, D log sigma + D/2 log 2 pi, for a Gaussian
    decoder (None for a Bernoulli one): the part of its nats that is sigma's, not the fit's."""
    if task.config.likelihood != "gaussian":
        return None
    d = 28 * 28
    return d * math.log(task.config.sigma) + 0.5 * d * LOG_2PI


def measure(task: VAETask, state, train: Dataset, test: Dataset, workdir: str, mesh,
            epoch: int, test_summary: dict, iwae_k: int, eval_images: int,
            nn_samples: int = 1000, num_samples: int = 10000,
            quality: Optional[tuple[str, QualityFn]] = None,
            log: Callable[[str], None] = print, held_out: int = 0) -> dict:
    """Every column of ``COLUMNS`` (and the quality scores) for a trained run, read from
    ``claims.json`` in ``workdir`` when it was written for the same epoch and options.

    ``held_out`` > 0 keeps ``held_out`` test images (``held_out_split``) out of the memorisation
    test's references and scores them as the samples are scored: ``null_nearer_train`` (with
    ``null_nearer_train_se``) is then what real images never trained on score against the same
    references, the test's null (0.5 up to noise). Every distance, the samples' and the null's,
    is then also written to ``nn_distances.npz`` beside ``claims.json``."""
    key = {"epoch": epoch, "iwae_k": iwae_k, "eval_images": eval_images,
           "nn_samples": nn_samples, "num_samples": num_samples,
           "quality": quality[0] if quality else None}
    if held_out:
        key["held_out"] = held_out
        key["held_out_split"] = "permutation, seed 0"
    path = os.path.join(workdir, CLAIMS_FILE)
    if os.path.exists(path):
        with open(path) as f:
            cached = json.load(f)
        if cached.get("key") == key:
            log(f"Claims measurements of epoch {epoch} read from {path}.")
            return cached["row"]
    if parallel.is_main_process():  # an ensemble's run<r>/, made at its first measurement
        os.makedirs(workdir, exist_ok=True)
    params = state.model.params
    train_summary = vae_eval.evaluate_cached(task, params, train.images[:eval_images], workdir,
                                             epoch, mesh, iwae_k=iwae_k, split="train", log=log)
    log("Probing the posterior means (logistic regression, 1-NN) and estimating I(x; z)...")
    row = {"rate": test_summary["kl"], "neg_elbo": test_summary["neg_elbo"],
           **informativeness(task, params, train, test),
           "active_units": test_summary["active_units"],
           "mean_sigma": test_summary["mean_sigma"], "mu_std": test_summary["mu_std"],
           "mse_train": train_summary["mse"], "mse_test": test_summary["mse"],
           "recon_train": train_summary["recon"], "recon_test": test_summary["recon"],
           "recon_gap": test_summary["recon"] - train_summary["recon"],
           "iwae_train": train_summary["iwae_nll"], "iwae_test": test_summary["iwae_nll"],
           "iwae_gap": test_summary["iwae_nll"] - train_summary["iwae_nll"]}
    samples = draw_samples(task, state.model, max(num_samples, nn_samples),
                           jax.random.PRNGKey(0))
    log(f"Nearest training and test images of {nn_samples} prior samples...")
    held, kept = held_out_split(len(test), held_out)
    references = test.images[kept]
    d_train, d_test = nearest_image_distances(samples[:nn_samples], train.images, references)
    row.update(summarise_distances(d_train, d_test),
               nn_references=min(len(train), len(references)))
    if held_out:
        real = test.images[held].astype(np.float32) / 127.5 - 1.0
        null_train, null_test = nearest_image_distances(real, train.images, references)
        null = summarise_distances(null_train, null_test)
        row.update(null_nearer_train=null["nearer_train"],
                   null_nearer_train_se=null["nearer_train_se"], null_d_train=null["d_train"],
                   null_d_test=null["d_test"])
        if parallel.is_main_process():
            with write_atomically(os.path.join(workdir, DISTANCES_FILE), "wb") as f:
                np.savez(f, d_train=d_train, d_test=d_test, null_train=null_train,
                         null_test=null_test)
    if quality is not None:
        log(f"Scoring {num_samples} prior samples...")
        row.update(quality[1](samples[:num_samples]))
    if parallel.is_main_process():
        with write_atomically(path) as f:
            json.dump({"key": key, "row": row}, f, indent=2)
    return row


def sigma_history(workdir: str) -> np.ndarray:
    """The encoder's mean std at every training step of the run in ``workdir`` (of a seed
    ensemble: the mean over its runs)."""
    with open(os.path.join(workdir, "VAE_history.json")) as f:
        sigma = np.asarray(json.load(f)["sigma"], np.float64)
    return sigma.mean(axis=0) if sigma.ndim == 2 else sigma
