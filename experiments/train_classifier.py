"""Train the classifier whose features and class probabilities score generated samples.

    python experiments/train_classifier.py --dataset fashion_mnist --data-dir /path/to/idx-files

A small CNN (jaxgen/models/classifier.py) trained through the shared loop; its test accuracy is
printed at the end and written to WORKDIR/classifier.json. Pass WORKDIR to evaluate.py as
--classifier. Rerunning the same command resumes from the newest checkpoint.
"""

import os

from jaxgen import cli, data
from jaxgen.train import loop
from jaxgen.train.classifier import REPORT, ClassifierConfig, ClassifierTask, write_report


def main() -> None:
    args = cli.training_parser(__doc__, ClassifierConfig, exclude=("num_seeds",)).parse_args()
    config = ClassifierConfig.from_flags(args, num_seeds=1)  # one classifier a workdir
    run = cli.prepare_run(args, config, "classifier")

    train = data.load_dataset(config.dataset, "train", run.options.data_dir)
    test = data.load_dataset(config.dataset, "test", run.options.data_dir)
    run.log(f"Classifier on {config.dataset}: {len(train)} training images, batch "
            f"{config.batch_size}, {run.describe()}")
    task = ClassifierTask(config)
    state, _ = loop.train(task, train, run.workdir, run.mesh,
                          profile_steps=run.options.profile_range)
    report = write_report(task, state.model, test.images, test.labels, run.workdir,
                          num_train=len(train), epoch=config.epochs, mesh=run.mesh)
    run.log(f"Test accuracy: {report['test_accuracy']:.4f} on {report['num_test']} test "
            f"images ({os.path.join(os.path.abspath(run.workdir), REPORT)})")


if __name__ == "__main__":
    cli.run(main)
