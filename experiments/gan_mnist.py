"""Train the reference vanilla GAN (pytorch-generative-model-collections' GAN.py) on MNIST.

    python experiments/gan_mnist.py                      # MNIST through TFDS, 50 epochs
    python experiments/gan_mnist.py --dataset fashion_mnist --data-dir /path/to/idx-files

Rerunning the same command resumes from the newest checkpoint in --workdir.
"""

from jaxgen import cli, data
from jaxgen.cli import EvalOptions
from jaxgen.train import loop
from jaxgen.train.gan import GANConfig, GANTask


def main() -> None:
    parser = cli.training_parser(__doc__, GANConfig)
    EvalOptions.add_flags(parser, "evaluation during training")
    args = parser.parse_args()

    config = GANConfig.from_flags(args)
    run = cli.prepare_run(args, config, "gan")
    hooks = cli.eval_hooks(args, config)
    train = data.load_dataset(config.dataset, "train", run.options.data_dir)
    run.log(f"GAN on {config.dataset}: {len(train)} training images, batch "
            f"{config.batch_size}, {run.describe()}")
    loop.train(GANTask(config), train.images, run.workdir, run.mesh, epoch_hooks=hooks)


if __name__ == "__main__":
    cli.run(main)
