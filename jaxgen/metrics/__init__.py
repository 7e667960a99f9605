"""Sample-quality scores in a classifier's feature space, on plain arrays and functions.

For an array of samples (N, 28, 28, 1) in [-1, 1] and a classifier's feature function::

    extractor = FeatureExtractor(features_and_logits, params, mesh, dataset="mnist",
                                 feature_dim=128)
    evaluator = Evaluator(extractor, "mnist", num_samples=len(samples))
    scores = evaluator.evaluate(samples)      # {"fid", "inception_score", ...}
    floor = evaluator.floor                   # the same, for N real test images

Nothing here knows a trainer or a checkpoint: ``jaxgen.runs.evaluate`` restores a trained
classifier (``load_classifier``) and scores a run's samples (``evaluate_run``).
"""

from jaxgen.metrics.evaluator import (
    METRICS,
    SCORES,
    Evaluator,
    format_table,
    sample_metrics,
    summarise_runs,
)
from jaxgen.metrics.features import FeatureExtractor
from jaxgen.metrics.scores import (
                                   class_coverage,
                                   frechet_distance,
                                   frechet_distance_of_features,
                                   gaussian_stats,
                                   inception_score,
                                   label_accuracy,
                                   matched_label_accuracy,
                                   precision_recall,
                                   trace_sqrt_product,
)

__all__ = ["METRICS", "SCORES", "Evaluator", "format_table", "sample_metrics", "summarise_runs",
           "FeatureExtractor",
           "class_coverage", "frechet_distance", "frechet_distance_of_features",
           "gaussian_stats", "inception_score", "label_accuracy", "matched_label_accuracy",
           "precision_recall", "trace_sqrt_product"]
