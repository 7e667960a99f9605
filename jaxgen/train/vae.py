"""The variational autoencoder as a :class:`~jaxgen.train.loop.Task`, and its test-set evaluation.

Objective, per image, in nats (Kingma & Welling 2014; Higgins et al. 2017 for the weight beta):

    loss = -(1/K sum_k log p(x | z_k)) + beta * KL(q(z|x) || N(0, I)),
    z_k = mu(x) + sigma(x) * eps_k,  eps_k ~ N(0, I)   (the reparameterisation)

beta = 1 is the negative ELBO; beta = 0 trains the reconstruction term alone. The KL is in closed
form. The likelihood is Bernoulli (decoder logits; images dynamically binarised, x ~ Bernoulli(pixel
intensity), afresh every step, as for "dynamically binarised MNIST") or Gaussian with a fixed std
``sigma`` on intensities in [0, 1]. The evaluation adds the importance-weighted bound on log p(x)
with k samples (Burda et al. 2016), the encoder's mean std and the active units (Burda et al.'s
criterion: latent dimensions whose posterior mean varies across the data, Var_x E_q[z_u] > 0.01).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax import lax

from jaxgen import losses, parallel, viz
from jaxgen.errors import JaxgenError
from jaxgen.models.vae import ACTIVATIONS, ARCHITECTURES, IMAGE_SHAPE, VAE
from jaxgen.train.loop import Task, TrainConfig, TrainState, epoch_images, named_key

LIKELIHOODS = ("bernoulli", "gaussian")
LR_SCHEDULES = ("constant", "burda")
SAMPLE_GRID = 64  # prior samples drawn after every epoch (an 8x8 grid)
DISPLAY_IMAGES = 32  # fixed test images shown beside their reconstructions
ACTIVE_UNIT_THRESHOLD = 1e-2  # Burda et al. (2016), section 5.2


@dataclasses.dataclass(frozen=True)
class VAEConfig(TrainConfig):
    batch_size: int = 100
    latent_dim: int = 20
    likelihood: str = "bernoulli"  # or "gaussian" (fixed std ``sigma``)
    sigma: float = 0.1  # the Gaussian decoder's std, in units of pixel intensity in [0, 1]
    beta: float = 1.0  # weight of the KL term: 1 = the ELBO, 0 = reconstruction only
    mc_samples: int = 1  # K, samples of z per image in the reconstruction term
    architecture: str = "mlp"
    hidden: tuple[int, ...] = (400, 400)
    activation: str = "relu"
    lr: float = 1e-3
    adam_eps: float = 1e-8
    lr_schedule: str = "constant"  # or "burda": 1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(self.hidden))  # JSON gives a list back

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.latent_dim, int) or self.latent_dim < 1:
            raise JaxgenError(f"--latent-dim must be a positive integer, got {self.latent_dim}.")
        if not isinstance(self.mc_samples, int) or self.mc_samples < 1:
            raise JaxgenError(f"--mc-samples must be a positive integer (K >= 1 samples of z per "
                              f"image), got {self.mc_samples}.")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise JaxgenError(f"--beta must be a finite number >= 0 (1 = the ELBO, 0 = no KL "
                              f"term), got {self.beta}.")
        if not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise JaxgenError(f"--sigma must be positive (the Gaussian decoder's std), got "
                              f"{self.sigma}.")
        if self.likelihood not in LIKELIHOODS:
            raise JaxgenError(f"unknown likelihood {self.likelihood!r}; choose one of "
                              f"{', '.join(LIKELIHOODS)}.")
        if self.architecture not in ARCHITECTURES:
            raise JaxgenError(f"unknown architecture {self.architecture!r}; choose one of "
                              f"{', '.join(ARCHITECTURES)}.")
        if self.activation not in ACTIVATIONS:
            raise JaxgenError(f"unknown activation {self.activation!r}; choose one of "
                              f"{', '.join(ACTIVATIONS)}.")
        if not self.hidden or any(not isinstance(w, int) or w < 1 for w in self.hidden):
            raise JaxgenError(f"--hidden must be positive layer widths such as 400,400, got "
                              f"{','.join(map(str, self.hidden))}.")
        if not self.lr > 0:
            raise JaxgenError(f"--lr must be positive, got {self.lr}.")
        if not self.adam_eps > 0:
            raise JaxgenError(f"--adam-eps must be positive, got {self.adam_eps}.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise JaxgenError(f"unknown --lr-schedule {self.lr_schedule!r}; choose one of "
                              f"{', '.join(LR_SCHEDULES)}.")


# Burda et al. (2016), section 5: the 784-200-200-50 Bernoulli VAE (their "one stochastic layer"
# model) on dynamically binarised MNIST, trained with Adam (eps 1e-4), batch 20, for 3^i passes at
# learning rate 1e-3 * 10^(-i/7), i = 0..7 (3280 epochs). They report a test NLL of 86.76 nats
# (k = 5000) for K = 1 training.
PRESETS = {
    "burda": dict(architecture="mlp", hidden=(200, 200), latent_dim=50, activation="tanh",
                  likelihood="bernoulli", mc_samples=1, batch_size=20, lr=1e-3, adam_eps=1e-4,
                  lr_schedule="burda", epochs=3280),
}


def burda_schedule(lr: float, steps_per_epoch: int) -> optax.Schedule:
    """lr * 10^(-i/7) for 3^i epochs, i = 0..7, then the last rate."""
    ends = np.cumsum([3 ** i for i in range(8)])[:-1]  # epochs after which the rate drops
    return optax.piecewise_constant_schedule(
        lr, {int(e) * steps_per_epoch: 10 ** (-1 / 7) for e in ends})


class VAEModel(struct.PyTreeNode):
    params: Any
    opt_state: Any


class VAETask(Task):
    name = "VAE"
    metric_names = ("loss", "recon", "kl", "sigma")  # nats per image; sigma: mean encoder std

    def __init__(self, config: VAEConfig, steps_per_epoch: Optional[int] = None,
                 display_images: Optional[np.ndarray] = None):
        """``steps_per_epoch`` is needed to train with the "burda" schedule; ``display_images``
        (uint8, e.g. the first test images) are reconstructed after every epoch."""
        self.config = config
        self.net = VAE(config.latent_dim, config.hidden, config.architecture, config.activation)
        self._trainable = config.lr_schedule == "constant" or steps_per_epoch is not None
        lr = (config.lr if config.lr_schedule == "constant"
              else burda_schedule(config.lr, steps_per_epoch or 1))
        self.tx = optax.adam(lr, b1=0.9, b2=0.999, eps=config.adam_eps)
        self.display = None
        if display_images is not None:  # as the test evaluation sees them
            self.display = jnp.asarray(fixed_targets(self, display_images)[:DISPLAY_IMAGES])
        self._pictures = jax.jit(self._epoch_pictures)

    # ---------------------------------------------------------------- pieces
    def targets(self, images: jax.Array, key: jax.Array) -> jax.Array:
        """What the likelihood models: intensities in [0, 1], binarised for a Bernoulli decoder."""
        x = (images + 1.0) / 2.0
        if self.config.likelihood == "bernoulli":
            return jax.random.bernoulli(key, x).astype(jnp.float32)
        return x

    def encode(self, params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.net.apply({"params": params}, x, method=VAE.encode)

    def decode(self, params, z: jax.Array) -> jax.Array:
        return self.net.apply({"params": params}, z, method=VAE.decode)

    def log_likelihood(self, x: jax.Array, decoded: jax.Array) -> jax.Array:
        """log p(x | z) per image from the decoder's outputs at z."""
        if self.config.likelihood == "bernoulli":
            return losses.bernoulli_log_likelihood(x, decoded)
        return losses.gaussian_log_likelihood(x, decoded, self.config.sigma)

    def mean_image(self, decoded: jax.Array) -> jax.Array:
        """The decoder's mean E[x | z] as an image in [-1, 1]."""
        if self.config.likelihood == "bernoulli":
            mean = jax.nn.sigmoid(decoded)
        else:
            mean = jnp.clip(decoded, 0.0, 1.0)
        return mean * 2.0 - 1.0

    def reparameterise(self, mu: jax.Array, log_var: jax.Array, eps: jax.Array) -> jax.Array:
        """z = mu + sigma * eps; eps (B, K, latent) gives K samples per image."""
        return mu[:, None] + jnp.exp(0.5 * log_var)[:, None] * eps

    def objective_terms(self, params, x: jax.Array, key: jax.Array, k: int) -> dict:
        """Per image: ``log_lik`` = 1/K sum_k log p(x|z_k), ``kl``, ``sigma`` (mean std)."""
        mu, log_var = self.encode(params, x)
        eps = parallel.shard_batch(jax.random.normal(key, (x.shape[0], k, mu.shape[-1])))
        z = self.reparameterise(mu, log_var, eps)
        log_lik = self.log_likelihood(x[:, None], self.decode(params, z)).mean(axis=1)
        return {"log_lik": log_lik, "kl": losses.gaussian_kl_to_standard(mu, log_var),
                "sigma": jnp.exp(0.5 * log_var).mean(axis=-1)}

    def init(self, key: jax.Array) -> VAEModel:
        params = self.net.init(key, jnp.zeros((1,) + IMAGE_SHAPE))["params"]
        return VAEModel(params, self.tx.init(params))

    # ---------------------------------------------------------------- step
    def loss(self, params, images: jax.Array, key: jax.Array) -> tuple[jax.Array, dict]:
        """The batch mean of -(1/K sum_k log p(x|z_k)) + beta KL, and the logged metrics."""
        binarise_key, eps_key = jax.random.split(key)
        x = self.targets(images, binarise_key)
        t = self.objective_terms(params, x, eps_key, self.config.mc_samples)
        recon, kl = -t["log_lik"].mean(), t["kl"].mean()
        loss = recon + self.config.beta * kl
        return loss, {"loss": loss, "recon": recon, "kl": kl, "sigma": t["sigma"].mean()}

    def train_step(self, model: VAEModel, images: jax.Array, key: jax.Array):
        if not self._trainable:
            raise JaxgenError("the burda learning-rate schedule needs steps_per_epoch; pass it "
                              "to VAETask.")
        loss_fn = lambda params: self.loss(params, images, key)  # noqa: E731
        grads, metrics = jax.grad(loss_fn, has_aux=True)(model.params)
        updates, opt_state = self.tx.update(grads, model.opt_state, model.params)
        return VAEModel(optax.apply_updates(model.params, updates), opt_state), metrics

    def sample_images(self, model: VAEModel, key: jax.Array, num: int) -> jax.Array:
        z = jax.random.normal(key, (num, self.config.latent_dim))
        return self.mean_image(self.decode(model.params, z))

    def reconstruct(self, params, x: jax.Array) -> jax.Array:
        """The decoder's mean at the posterior mean, in [-1, 1], for targets x."""
        mu, _ = self.encode(params, x)
        return self.mean_image(self.decode(params, mu))

    # ---------------------------------------------------------------- pictures
    def _epoch_pictures(self, params, rng):
        samples = self.sample_images(VAEModel(params, None), named_key(rng, "sample"), SAMPLE_GRID)
        if self.display is None:
            return samples, None
        return samples, self.reconstruct(params, self.display)

    def epoch_end(self, state: TrainState, epoch: int, workdir: str) -> None:
        samples, recons = parallel.to_host(self._pictures(state.model.params, state.rng))
        if not parallel.is_main_process():
            return
        viz.save_image_grid(samples, os.path.join(workdir, f"{self.name}_epoch{epoch:03d}.png"),
                            ncols=8)
        if recons is not None:
            viz.save_image_grid(
                interleave_rows(np.asarray(self.display) * 2 - 1, recons, ncols=8),
                os.path.join(workdir, f"{self.name}_reconstruction_epoch{epoch:03d}.png"),
                ncols=8)

    def train_end(self, workdir: str, history: dict) -> None:
        viz.save_gif(epoch_images(workdir, self.name),
                     os.path.join(workdir, f"{self.name}_generate_animation.gif"))
        viz.plot_panels({k: history[k] for k in self.metric_names},
                        os.path.join(workdir, f"{self.name}_curves.png"),
                        ylabels={"loss": "nats", "recon": "nats", "kl": "nats",
                                 "sigma": "mean std"},
                        title=f"VAE (beta={self.config.beta}) on {self.config.dataset}")


def interleave_rows(originals: np.ndarray, others: np.ndarray, ncols: int) -> np.ndarray:
    """Rows of ``ncols`` originals, each followed by the matching row of ``others``."""
    rows = []
    for start in range(0, len(originals), ncols):
        rows.extend([originals[start:start + ncols], others[start:start + ncols]])
    return np.concatenate(rows)


# ----------------------------------------------------------------------------- evaluation
def _chunk_size(k: int, limit: int = 500) -> int:
    """The largest divisor of k not above ``limit``: the samples of z decoded at once."""
    return max(d for d in range(1, min(k, limit) + 1) if k % d == 0)


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
        log_lik = task.log_likelihood(x[:, None], task.decode(
            params, task.reparameterise(mu, log_var, eps)))[:, 0]

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
                "mu": mu, "sigma": jnp.exp(0.5 * log_var),
                "iwae": lse - math.log(iwae_k)}

    return jax.jit(evaluate, in_shardings=(repl, repl, repl), out_shardings=repl,
                   compiler_options=parallel.compiler_options(mesh))


def evaluate(task: VAETask, params, images: np.ndarray, mesh, iwae_k: int = 5000,
             seed: int = 0, batch_size: int = 100, log=None) -> tuple[dict, dict]:
    """Test-set figures of a trained VAE on uint8 ``images``, in nats per image.

    Returns (summary, per_image). The summary has ``neg_elbo`` (-ELBO, the beta = 1 bound, whatever
    beta trained the model), ``recon`` (-E_q log p(x|z), one sample of z), ``kl``, ``iwae_nll``
    (-log p(x) estimated with ``iwae_k`` importance samples: an upper bound that tightens with k),
    ``mean_sigma`` (the encoder's std averaged over images and dimensions), ``active_units``.
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
        "mean_sigma": float(np.mean(per_image["sigma"])),
        # The spread of the posterior means over the data (mean over dimensions of their std):
        # the scale of the latent space the decoder learnt, next to the prior's 1.
        "mu_std": float(np.mean(np.sqrt(mu_variance))),
        "active_units": int(np.sum(mu_variance > ACTIVE_UNIT_THRESHOLD)),
        "latent_dim": task.config.latent_dim,
        "num_images": n,
    }
    return summary, per_image


def write_evaluation(workdir: str, summary: dict, epoch: int) -> str:
    path = os.path.join(workdir, "test_eval.json")
    with open(path, "w") as f:
        json.dump({**summary, "epoch": epoch}, f, indent=2)
    return path


def read_evaluation(workdir: str) -> Optional[dict]:
    path = os.path.join(workdir, "test_eval.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def train_and_evaluate(config: VAEConfig, train_images: np.ndarray, test_images: np.ndarray,
                       workdir: str, mesh, iwae_k: int = 5000, eval_images: Optional[int] = None,
                       epoch_hooks=(), log=print) -> tuple[VAETask, TrainState, Optional[dict]]:
    """Trains (or resumes) a VAE run in ``workdir``, then evaluates it on the first
    ``eval_images`` test images (default all; 0 skips) and writes ``test_eval.json``. An
    evaluation already written for the same epoch and settings is reused."""
    from jaxgen.train import loop

    steps_per_epoch = len(train_images) // config.batch_size
    task = VAETask(config, steps_per_epoch=steps_per_epoch, display_images=test_images)
    state, history = loop.train(task, train_images, workdir, mesh, log=log,
                                epoch_hooks=epoch_hooks)
    n = len(test_images) if eval_images is None else min(eval_images, len(test_images))
    if n == 0:
        return task, state, None
    epoch = len(history.per_epoch_time)
    cached = read_evaluation(workdir)
    if cached and (cached.get("epoch"), cached.get("iwae_k"), cached.get("num_images")) == (
            epoch, iwae_k, n):
        log(f"Test-set evaluation of epoch {epoch} read from {workdir}/test_eval.json.")
        return task, state, cached
    log(f"Evaluating on {n} test images (importance-weighted bound with k={iwae_k})...")
    summary, _ = evaluate(task, state.model.params, test_images[:n], mesh, iwae_k=iwae_k,
                          log=log)
    summary = {"epoch": epoch, **summary}
    if parallel.is_main_process():
        write_evaluation(workdir, summary, epoch)
    log(format_evaluation(summary))
    return task, state, summary


def format_evaluation(s: dict) -> str:
    return (f"test, nats per image: -ELBO {s['neg_elbo']:.2f} = recon {s['recon']:.2f} + KL "
            f"{s['kl']:.2f}; -log p(x) <= {s['iwae_nll']:.2f} (k={s['iwae_k']}); mean encoder "
            f"std {s['mean_sigma']:.4g}; std of posterior means {s['mu_std']:.3g}; active units "
            f"{s['active_units']}/{s['latent_dim']} ({s['num_images']} images)")


def fixed_targets(task: VAETask, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """The model's view of uint8 test images, the same for every model and batching: intensities
    in [0, 1], binarised once with key ``seed`` for a Bernoulli model."""
    images = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
    return np.asarray(jax.jit(task.targets)(images, jax.random.PRNGKey(seed)))


def encode_means(task: VAETask, params, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Posterior means mu(x) of uint8 images (seen as ``fixed_targets``), on the default device."""
    x = fixed_targets(task, images)
    fn = _encode_means_fn(task)
    return np.concatenate([np.asarray(fn(params, x[i:i + batch_size]))
                           for i in range(0, len(x), batch_size)])


def decode_means(task: VAETask, params, z: np.ndarray) -> np.ndarray:
    """Decoder means E[x | z] in [-1, 1] of latents z (N, latent_dim)."""
    return np.asarray(_decode_means_fn(task)(params, z))


@functools.lru_cache(maxsize=8)
def _encode_means_fn(task: VAETask):
    """Jitted once per task (a retrace per call would recompile each time)."""
    return jax.jit(lambda p, x: task.encode(p, x)[0])


@functools.lru_cache(maxsize=8)
def _decode_means_fn(task: VAETask):
    return jax.jit(lambda p, z: task.mean_image(task.decode(p, z)))


def reconstructions(task: VAETask, params, images: np.ndarray) -> np.ndarray:
    """The decoder means at the posterior means of uint8 images, in [-1, 1]."""
    return decode_means(task, params, encode_means(task, params, images))


def interpolations(task: VAETask, params, start: np.ndarray, end: np.ndarray,
                   steps: int = 10) -> np.ndarray:
    """Decoded straight lines in latent space between the posterior means of paired uint8 images:
    (pairs * steps) images in [-1, 1], one row of ``steps`` per pair."""
    za, zb = encode_means(task, params, start), encode_means(task, params, end)
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[None, :, None]
    z = (1 - t) * za[:, None] + t * zb[:, None]
    return decode_means(task, params, z.reshape(-1, za.shape[-1]))
