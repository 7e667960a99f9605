"""Sample-quality scores on classifier outputs: pure numpy functions, computed in float64.

- Fréchet distance between Gaussians fitted to features (FID, Heusel et al. 2017), here in the
  feature space of a small dataset classifier instead of Inception-v3:
  ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})``.
- Inception-Score-style score (Salimans et al. 2016), ``exp(E_x KL(p(y|x) || p(y)))``, on one split.
- Class coverage: the classes the classifier's argmax hits, and the KL divergence of the predicted
  class histogram from uniform (0 when every class gets the same share).
- Precision and recall by k-nearest-neighbour manifolds (Kynkäänniemi et al. 2019, "Improved
  Precision and Recall Metric for Assessing Generative Models"): a point is on a set's manifold if
  it lies in the ball around some point of the set whose radius is that point's distance to its
  k-th nearest neighbour within the set. Precision: the share of samples on the real manifold;
  recall: the share of real images on the samples' manifold.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from jaxgen.errors import JaxgenError


def gaussian_stats(features: np.ndarray,
                   flag: str = "--num-samples") -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d) of ``features`` (N, d), in float64.

    Fewer than d + 1 points span at most N - 1 < d dimensions, so the covariance would be
    singular and the distance meaningless: that is refused."""
    x = np.asarray(features, dtype=np.float64)
    n, d = x.shape
    if n < d + 1:
        raise JaxgenError(f"{flag} {n} is too few for {d}-dimensional features: their covariance "
                          f"would be singular; pass {flag} of at least {d + 1}.")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    eigenvalues, vectors = np.linalg.eigh((sigma + sigma.T) / 2)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((S1 S2)^{1/2})`` for symmetric positive semi-definite S1, S2.

    Method: S1 S2 is not symmetric, and a general matrix square root of it (``scipy.linalg.sqrtm``,
    Schur form) can come back complex or inaccurate when the covariances are nearly singular,
    which 128-d features of a few thousand images often are. But S1 S2 = A B with A = S1^{1/2},
    B = S1^{1/2} S2, and A B and B A share their eigenvalues: those of
    M = S1^{1/2} S2 S1^{1/2}, which is symmetric PSD. So
    tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(M)), with S1^{1/2} and the lambda_i from symmetric
    eigen-decompositions (``eigh``, stable and real) and tiny negative eigenvalues from rounding
    clipped to 0. No inverse is needed: it holds for singular S1 too.
    """
    root1 = _psd_sqrt(np.asarray(sigma1, np.float64))
    m = root1 @ np.asarray(sigma2, np.float64) @ root1
    eigenvalues = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sum(np.sqrt(np.clip(eigenvalues, 0, None))))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Squared 2-Wasserstein (Fréchet) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    diff = mu1 - mu2
    value = (diff @ diff + np.trace(sigma1) + np.trace(sigma2)
             - 2 * trace_sqrt_product(sigma1, sigma2))
    return float(max(value, 0.0))  # >= 0 in exact arithmetic; rounding can dip below


def frechet_distance_of_features(a: np.ndarray, b: np.ndarray,
                                 flag: str = "--num-samples") -> float:
    """FID-style distance between the Gaussians fitted to two feature sets (N, d) and (M, d)."""
    return frechet_distance(*gaussian_stats(a, flag), *gaussian_stats(b, flag))


def inception_score(probs: np.ndarray) -> float:
    """``exp(mean_x KL(p(y|x) || p(y)))`` with p(y) the mean of the rows of ``probs`` (N, C).

    Between 1 (every image gets the same prediction) and C (confident predictions spread evenly
    over the C classes). One split over all N images (the original averages 10 splits)."""
    p = np.asarray(probs, np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    marginal = p.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(marginal)), 0.0)
    return float(np.exp(terms.sum(axis=1).mean()))


def class_histogram(probs: np.ndarray) -> np.ndarray:
    """How many rows of ``probs`` (N, C) have each class as their argmax: (C,) int."""
    probs = np.asarray(probs)
    return np.bincount(np.argmax(probs, axis=1), minlength=probs.shape[1])


def class_coverage(probs: np.ndarray) -> tuple[int, float]:
    """(classes predicted for at least one image, KL(predicted-class histogram || uniform))."""
    counts = class_histogram(probs)
    share = counts / counts.sum()
    used = share > 0
    kl = float(np.sum(share[used] * np.log(share[used] * len(counts))))
    return int(used.sum()), max(kl, 0.0)


def _squared_distances(a: np.ndarray, b: np.ndarray, b_norms: np.ndarray) -> np.ndarray:
    a_norms = np.einsum("ij,ij->i", a, a)
    d2 = a_norms[:, None] + b_norms[None, :] - 2 * (a @ b.T)
    # The expansion leaves rounding noise where the true distance is 0 (identical points).
    scale = a_norms[:, None] + b_norms[None, :]
    d2[d2 <= 1e-12 * scale] = 0.0
    return d2


def knn_radii(x: np.ndarray, k: int = 3, chunk: int = 500) -> np.ndarray:
    """Squared distance from each row of ``x`` to its k-th nearest other row, (N,)."""
    x = np.asarray(x, np.float64)
    if not 1 <= k < len(x):
        raise JaxgenError(f"k-NN radii with k={k} need more than {k} points, got {len(x)}; "
                          "pass more samples or a smaller k.")
    norms = np.einsum("ij,ij->i", x, x)
    radii = np.empty(len(x))
    for start in range(0, len(x), chunk):
        d2 = _squared_distances(x[start:start + chunk], x, norms)
        # Index k of the partition: index 0 is the point itself (distance 0).
        radii[start:start + chunk] = np.partition(d2, k, axis=1)[:, k]
    return radii


def manifold_coverage(points: np.ndarray, support: np.ndarray,
                      support_radii: Optional[np.ndarray] = None, k: int = 3,
                      chunk: int = 500) -> float:
    """The share of ``points`` inside the k-NN manifold of ``support`` (a union of balls)."""
    points, support = np.asarray(points, np.float64), np.asarray(support, np.float64)
    radii = knn_radii(support, k, chunk) if support_radii is None else support_radii
    norms = np.einsum("ij,ij->i", support, support)
    inside = 0
    for start in range(0, len(points), chunk):
        d2 = _squared_distances(points[start:start + chunk], support, norms)
        inside += int(np.sum(np.any(d2 <= radii[None, :], axis=1)))
    return inside / len(points)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3,
                     chunk: int = 500) -> tuple[float, float]:
    """k-NN precision and recall of ``fake`` (M, d) against ``real`` (N, d) features.

    Works on ``chunk`` rows at a time: memory is O(chunk * max(N, M)), not O(N * M)."""
    return (manifold_coverage(fake, real, k=k, chunk=chunk),
            manifold_coverage(real, fake, k=k, chunk=chunk))


def label_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """The share of samples drawn with label y (``labels``) that the classifier calls y (the
    argmax of ``probs``, (N, classes))."""
    return float(np.mean(np.argmax(probs, axis=1) == np.asarray(labels)))


def matched_label_accuracy(probs: np.ndarray, codes: np.ndarray,
                           num_codes: int) -> tuple[float, list]:
    """Label accuracy of samples drawn with categorical ``codes`` whose meaning was learned
    without labels (infoGAN): each code is matched to the class the classifier most often
    assigns to its samples (several codes may match one class), then scored as
    :func:`label_accuracy`. Returns (accuracy, the class of each code, -1 for a code never
    drawn)."""
    predicted, codes = np.argmax(probs, axis=1), np.asarray(codes)
    counts = np.zeros((num_codes, probs.shape[1]), np.int64)
    np.add.at(counts, (codes, predicted), 1)
    mapping = np.where(counts.sum(axis=1) > 0, np.argmax(counts, axis=1), -1)
    return float(np.mean(mapping[codes] == predicted)), mapping.tolist()
