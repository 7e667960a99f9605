"""How much a representation says about its inputs, on plain arrays.

- :func:`linear_probe` : test accuracy of a multinomial logistic regression fitted on training
  features (standardised with the training set's mean and std; L2 penalty ``l2`` on the weights;
  full-batch L-BFGS), the usual "linear probe" of a representation.
- :func:`nearest_neighbour_accuracy` : test accuracy of the 1-nearest-neighbour classifier
  (Euclidean) with the training features as its memory.
- :func:`nearest_distances` : each query's Euclidean distance to its nearest reference (e.g. a
  generated image's distance to the nearest training image).
- :func:`aggregate_posterior_mutual_information` : I(x; z) under an encoder's diagonal Gaussian
  posteriors q(z|x_n) with x uniform on the N given inputs:

      I = E_n E_{z ~ q(z|x_n)} [log q(z|x_n) - log q(z)],   q(z) = 1/N sum_m q(z|x_m),

  estimated with ``samples`` draws of z per input. For x uniform on the N inputs the estimate is
  unbiased (only Monte-Carlo noise, reported as ``mi_stderr``); as an estimate of I under the data
  distribution it is biased downward and can never exceed log N (q(z) >= q(z|x_n) / N), which it
  reaches when the posteriors of different inputs do not overlap. E_n KL(q(z|x_n) || p(z)) (the
  rate) = I + KL(q(z) || p(z)) bounds it from above.

Nothing here knows a model: features and posteriors are arrays.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets centred and scaled with the training set's mean and std (a constant feature
    keeps scale 1), in float64 before the cast back to float32."""
    train64, test64 = np.asarray(train, np.float64), np.asarray(test, np.float64)
    mean, std = train64.mean(axis=0), train64.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (((train64 - mean) / std).astype(np.float32),
            ((test64 - mean) / std).astype(np.float32))


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit_logistic(x: jax.Array, y: jax.Array, num_classes: int, l2: float, steps: int):
    """Weights (d, C) and biases (C,) minimising the mean cross-entropy + l2/2 |W|^2."""
    params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))

    targets = jax.nn.one_hot(y, num_classes)  # (a gather's gradient would scatter)

    def loss(p):
        logits = x @ p[0] + p[1]
        nll = optax.softmax_cross_entropy(logits, targets).mean()
        return nll + 0.5 * l2 * jnp.sum(jnp.square(p[0]))

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
        p, state = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(p, updates), state), value

    (params, _), _ = lax.scan(step, (params, opt.init(params)), length=steps)
    return params


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, l2: float = 1e-4, steps: int = 300) -> dict:
    """Train and test accuracy of a logistic regression fitted on (train_x, train_y)."""
    train_s, test_s = standardise(train_x, test_x)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    w, b = _fit_logistic(jnp.asarray(train_s), jnp.asarray(train_y, jnp.int32), num_classes,
                         l2, steps)
    w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)

    def accuracy(x, y):
        return float(np.mean(np.argmax(x.astype(np.float64) @ w + b, axis=1) == y))

    return {"train_accuracy": accuracy(train_s, train_y), "test_accuracy": accuracy(test_s, test_y)}


def _squared_distances(queries: np.ndarray, references: np.ndarray,
                       ref_sq: np.ndarray) -> np.ndarray:
    """|q - r|^2 for every pair, by |q|^2 - 2 q.r + |r|^2 (float64), clipped at 0."""
    d = (np.sum(np.square(queries), axis=1)[:, None] - 2.0 * queries @ references.T
         + ref_sq[None, :])
    return np.maximum(d, 0.0)


def nearest_neighbours(queries: np.ndarray, references: np.ndarray,
                       batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(index, Euclidean distance) of each query's nearest reference; rows flattened."""
    q = np.asarray(queries, np.float64).reshape(len(queries), -1)
    r = np.asarray(references, np.float64).reshape(len(references), -1)
    r_sq = np.sum(np.square(r), axis=1)
    index, dist = [], []
    for start in range(0, len(q), batch_size):
        d = _squared_distances(q[start:start + batch_size], r, r_sq)
        i = np.argmin(d, axis=1)
        index.append(i)
        dist.append(np.sqrt(d[np.arange(len(i)), i]))
    return np.concatenate(index), np.concatenate(dist)


def nearest_distances(queries: np.ndarray, references: np.ndarray,
                      batch_size: int = 500) -> np.ndarray:
    """Each query's Euclidean distance to its nearest reference."""
    return nearest_neighbours(queries, references, batch_size)[1]


def nearest_neighbour_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                               test_y: np.ndarray) -> float:
    """Test accuracy of 1-NN (Euclidean) on the features as given."""
    index, _ = nearest_neighbours(test_x, train_x)
    return float(np.mean(np.asarray(train_y)[index] == np.asarray(test_y)))


def aggregate_posterior_mutual_information(mu: np.ndarray, log_var: np.ndarray, seed: int = 0,
                                           samples: int = 1, batch_size: int = 250) -> dict:
    """I(x; z) under q for x uniform on the N inputs of posteriors N(mu_n, exp(log_var_n)) (N, d):
    ``mi`` (nats), ``mi_stderr`` (its Monte-Carlo standard error over inputs), ``log_n`` (the
    ceiling, log N). See the module docstring for the estimator and its bias."""
    mu = np.asarray(mu, np.float64)
    log_var = np.asarray(log_var, np.float64)
    n, d = mu.shape
    precision = np.exp(-log_var)  # (N, d)
    # log N(z; mu_m, var_m) = -1/2 [z^2 . p_m - 2 z . (mu_m p_m) + c_m],
    # c_m = sum(mu_m^2 p_m + log var_m + log 2 pi)
    const = np.sum(np.square(mu) * precision + log_var, axis=1) + d * math.log(2 * math.pi)
    weighted_mu = mu * precision
    rng = np.random.RandomState(seed)
    per_input = np.zeros(n)
    for _ in range(samples):
        eps = rng.standard_normal((n, d))
        z = mu + np.exp(0.5 * log_var) * eps
        # log q(z_n | x_n), in closed form from eps (exact, whatever the scale)
        own = -0.5 * np.sum(np.square(eps) + log_var + math.log(2 * math.pi), axis=1)
        for start in range(0, n, batch_size):
            zb = z[start:start + batch_size]
            log_q = -0.5 * (np.square(zb) @ precision.T - 2.0 * zb @ weighted_mu.T
                            + const[None, :])  # (b, N): log q(z_b | x_m)
            rows = np.arange(len(zb))
            log_q[rows, start + rows] = own[start:start + len(zb)]  # the exact own term
            top = log_q.max(axis=1, keepdims=True)
            log_marginal = (top[:, 0] + np.log(np.sum(np.exp(log_q - top), axis=1))
                            - math.log(n))
            per_input[start:start + len(zb)] += own[start:start + len(zb)] - log_marginal
    per_input /= samples
    return {"mi": float(per_input.mean()),
            "mi_stderr": float(per_input.std() / math.sqrt(n)),
            "log_n": math.log(n)}
