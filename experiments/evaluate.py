r"""Score a generative model's samples with a dataset classifier, beside the real-data floor.

    python experiments/evaluate.py --workdir checkpoints/gan_fashion_mnist \
        --classifier checkpoints/classifier_fashion_mnist --num-samples 10000 \
        --data-dir /path/to/idx-files

Draws N samples from the newest checkpoint of --workdir (a GAN or VAE run) and scores them
against N real training images: FID-style Fréchet distance in the classifier's feature space,
Inception-Score-style score, class coverage, k-NN precision and recall. The floor is the same
scores for N real test images. Writes WORKDIR/eval.json and prints a table.
"""

import argparse
import os

from jaxgen import cli, metrics, parallel
from jaxgen.cli import DrawOptions
from jaxgen.runs.evaluate import EVAL_FILE, evaluate_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, metavar="DIR",
                        help="a generative model's training workdir; eval.json is written here")
    parser.add_argument("--classifier", required=True, metavar="DIR",
                        help="workdir of experiments/train_classifier.py on the model's dataset")
    parser.add_argument("--num-samples", type=int, default=10000, metavar="N",
                        help="samples, real training images and real test images (%(default)s)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="directory with the four IDX files; default: tensorflow-datasets")
    parser.add_argument("--k", type=int, default=3,
                        help="neighbours for the precision/recall manifolds (%(default)s)")
    DrawOptions.add_flags(parser)
    args = parser.parse_args()
    DrawOptions.from_flags(args).validate()

    result = evaluate_run(args.workdir, args.classifier, args.num_samples,
                                  data_dir=args.data_dir, seed=args.seed, k=args.k,
                                  devices=parallel.select_devices(args.accelerator))
    if parallel.is_main_process():
        model, clf = result["model"], result["classifier"]
        print(f"{model['task']} (epoch {model['checkpoint_epoch']}) on {model['dataset']}, "
              f"{result['num_samples']} samples vs {result['num_samples']} training images; "
              f"classifier {clf['path']} (epoch {clf['checkpoint_epoch']}, test accuracy "
              f"{clf['test_accuracy']:.4f})")
        print(metrics.format_table(result, name=model["task"]))
        print(f"wrote {os.path.join(model['workdir'], EVAL_FILE)} "
              f"({result['seconds']:.1f} s)")


if __name__ == "__main__":
    cli.run(main)
