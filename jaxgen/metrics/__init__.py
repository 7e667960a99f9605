"""Sample-quality evaluation: classifier features, Fréchet distance, scores, the real-data floor.

    from jaxgen import metrics
    result = metrics.evaluate_run("checkpoints/gan_mnist", "checkpoints/classifier_mnist", 10000)

or, for an array of samples (N, 28, 28, 1) in [-1, 1]:

    extractor = metrics.load_classifier("checkpoints/classifier_mnist")
    evaluator = metrics.Evaluator(extractor, "mnist", num_samples=len(samples))
    scores = evaluator.evaluate(samples)      # {"fid", "inception_score", ...}
    floor = evaluator.floor                   # the same, for N real test images
"""

from jaxgen.metrics.evaluate import (EVAL_FILE, HISTORY_FILE, METRICS, EvaluateEvery, Evaluator,
                                     evaluate_run, format_table, sample_metrics)
from jaxgen.metrics.features import FeatureExtractor, load_classifier
from jaxgen.metrics.scores import (class_coverage, frechet_distance,
                                   frechet_distance_of_features, gaussian_stats,
                                   inception_score, precision_recall, trace_sqrt_product)

__all__ = ["EVAL_FILE", "HISTORY_FILE", "METRICS", "EvaluateEvery", "Evaluator", "evaluate_run",
           "format_table", "sample_metrics", "FeatureExtractor", "load_classifier",
           "class_coverage", "frechet_distance", "frechet_distance_of_features",
           "gaussian_stats", "inception_score", "precision_recall", "trace_sqrt_product"]
