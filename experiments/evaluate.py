r"""Score a generative model's samples with a dataset classifier, beside the real-data floor.

    python experiments/evaluate.py --workdir checkpoints/gan_fashion_mnist \
        --classifier checkpoints/classifier_fashion_mnist --num-samples 10000 \
        --data-dir /path/to/idx-files

Draws N samples from the newest checkpoint of --workdir (a GAN or VAE run) and scores them
against N real training images: FID-style Fréchet distance in the classifier's feature space,
Inception-Score-style score, class coverage, k-NN precision and recall. The floor is the same
scores for N real test images. Writes WORKDIR/eval.json and prints a table. A seed ensemble's
workdir (trained with --num-seeds) has every run scored: the table gives mean ± std over the
runs, eval.json each run's scores too.
"""

import dataclasses
import os

from jaxgen import cli, metrics, parallel
from jaxgen.cli import DrawOptions
from jaxgen.config import POSITIVE_INT, setting
from jaxgen.runs.evaluate import EVAL_FILE, evaluate_run


@dataclasses.dataclass(frozen=True)
class EvaluateOptions(DrawOptions):
    classifier: str = setting(None, "workdir of experiments/train_classifier.py on the model's "
                                    "dataset", metavar="DIR", required=True)
    num_samples: int = setting(10000, "samples, real training images and real test images",
                               POSITIVE_INT, metavar="N")
    k: int = setting(3, "neighbours for the precision/recall manifolds", POSITIVE_INT)


def main() -> None:
    args = cli.parse_options(EvaluateOptions, __doc__)
    result = evaluate_run(args.workdir, args.classifier, args.num_samples,
                          data_dir=args.data_dir, seed=args.seed, k=args.k,
                          devices=parallel.select_devices(args.accelerator))
    if parallel.is_main_process():
        model, clf = result["model"], result["classifier"]
        print(f"{model['task']} (epoch {model['checkpoint_epoch']}) on {model['dataset']}, "
              f"{result['num_samples']} samples vs {result['num_samples']} training images; "
              f"classifier {clf['path']} (epoch {clf['checkpoint_epoch']}, test accuracy "
              f"{clf['test_accuracy']:.4f})")
        runs = model.get("num_runs", 1)
        print(metrics.format_table(result, name=model["task"] + (f", {runs} runs" if runs > 1
                                                                 else "")))
        print(f"wrote {os.path.join(model['workdir'], EVAL_FILE)} "
              f"({result['seconds']:.1f} s)")


if __name__ == "__main__":
    cli.run(main)
