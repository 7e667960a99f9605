"""Train a GAN of pytorch-generative-model-collections on MNIST: the vanilla GAN.py by default,
or another with --gan-type (LSGAN, WGAN, WGAN_GP, DRAGAN, EBGAN, BEGAN; the conditional CGAN,
ACGAN and infoGAN; beyond the reference, HINGE and RaGAN). --g-ema DECAY, for any of them, samples
from a moving average of G's weights.

    python experiments/gan_mnist.py                      # MNIST through TFDS, 50 epochs
    python experiments/gan_mnist.py --gan-type WGAN_GP --dataset fashion_mnist --data-dir DIR
    python experiments/gan_mnist.py --gan-type BEGAN --help    # BEGAN's own settings too

Rerunning the same command resumes from the newest checkpoint in --workdir (default
checkpoints/<type>_<dataset>, in lower case).
"""

import argparse

from jaxgen import cli, data
from jaxgen.cli import EvalOptions
from jaxgen.train import gan_variants, loop


def gan_type_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--gan-type", default="GAN", choices=list(gan_variants.OBJECTIVES),
                        help="which GAN of the collection to train (default: GAN); each "
                             "variant's own settings follow from it")
    return parser


def main() -> None:
    gan_type = gan_type_parser().parse_known_args()[0].gan_type
    task_class = gan_variants.task_class(gan_type)
    parser = cli.training_parser(__doc__, task_class.config_class, parents=[gan_type_parser()])
    EvalOptions.add_flags(parser, "evaluation during training")
    args = parser.parse_args()

    config = task_class.config_class.from_flags(args)
    run = cli.prepare_run(args, config, gan_type.lower())
    hooks = cli.eval_hooks(args, config)
    train = data.load_dataset(config.dataset, "train", run.options.data_dir)
    run.log(f"{gan_type} on {config.dataset}: {len(train)} training images, batch "
            f"{config.batch_size}, {run.describe()}")
    loop.train(task_class(config), train, run.workdir, run.mesh, epoch_hooks=hooks,
               profile_steps=run.options.profile_range)


if __name__ == "__main__":
    cli.run(main)
