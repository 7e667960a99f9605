"""Train the classifier whose features and class probabilities score generated samples.

    python experiments/train_classifier.py --dataset fashion_mnist --data-dir /path/to/idx-files

A small CNN (jaxgen/models/classifier.py) trained through the shared loop; its test accuracy is
printed at the end and written to WORKDIR/classifier.json. Pass WORKDIR to evaluate.py as
--classifier. Rerunning the same command resumes from the newest checkpoint.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxgen import cli  # noqa: E402


def main() -> None:
    from jaxgen.train.classifier import ClassifierConfig

    parser = cli.training_parser(__doc__, ClassifierConfig)
    d = ClassifierConfig()
    parser.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (%(default)s)")
    parser.add_argument("--dropout", type=float, default=d.dropout,
                        help="dropout rate on the feature layer (%(default)s)")
    parser.add_argument("--feature-dim", type=int, default=d.feature_dim,
                        help="size of the feature layer the metrics use (%(default)s)")
    args = parser.parse_args()

    config = cli.config_from_flags(ClassifierConfig, args)
    run = cli.prepare_run(args, config, "classifier")

    from jaxgen import data
    from jaxgen.train import loop
    from jaxgen.train.classifier import REPORT, ClassifierTask, write_report

    train = data.load_dataset(args.dataset, "train", args.data_dir)
    test = data.load_dataset(args.dataset, "test", args.data_dir)
    run.log(f"Classifier on {args.dataset}: {len(train)} training images, batch "
            f"{config.batch_size}, {run.describe()}")
    task = ClassifierTask(config)
    state, _ = loop.train(task, train.images, run.workdir, run.mesh, labels=train.labels)
    report = write_report(task, state.model, test.images, test.labels, run.workdir,
                          num_train=len(train), epoch=config.epochs, mesh=run.mesh)
    run.log(f"Test accuracy: {report['test_accuracy']:.4f} on {report['num_test']} test "
            f"images ({os.path.join(os.path.abspath(run.workdir), REPORT)})")


if __name__ == "__main__":
    cli.run(main)
