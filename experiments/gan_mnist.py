"""Train the reference vanilla GAN (pytorch-generative-model-collections' GAN.py) on MNIST.

    python experiments/gan_mnist.py                      # MNIST through TFDS, 50 epochs
    python experiments/gan_mnist.py --dataset fashion_mnist --data-dir /path/to/idx-files

Rerunning the same command resumes from the newest checkpoint in --workdir.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxgen import cli  # noqa: E402


def main() -> None:
    from jaxgen.train.gan import GANConfig, PRIORS

    parser = cli.training_parser(__doc__, GANConfig)
    d = GANConfig()
    parser.add_argument("--z-dim", type=int, default=d.z_dim, help="latent size (%(default)s)")
    parser.add_argument("--prior", default=d.prior, choices=PRIORS,
                        help="z ~ U[0,1)^z_dim (uniform, the reference) or N(0, I)")
    parser.add_argument("--lr-d", type=float, default=d.lr_d, help="Adam lr of D (%(default)s)")
    parser.add_argument("--lr-g", type=float, default=d.lr_g, help="Adam lr of G (%(default)s)")
    parser.add_argument("--beta1", type=float, default=d.beta1, help="Adam beta1 (%(default)s)")
    parser.add_argument("--beta2", type=float, default=d.beta2, help="Adam beta2 (%(default)s)")
    cli.add_eval_flags(parser)
    args = parser.parse_args()

    config = cli.config_from_flags(GANConfig, args)
    cli.check_eval_flags(args)
    run = cli.prepare_run(args, config, "gan")
    hooks = cli.eval_hooks_from_flags(args)

    from jaxgen import data
    from jaxgen.train import loop
    from jaxgen.train.gan import GANTask

    train = data.load_dataset(args.dataset, "train", args.data_dir)
    run.log(f"GAN on {args.dataset}: {len(train)} training images, batch {config.batch_size}, "
            f"{run.describe()}")
    loop.train(GANTask(config), train.images, run.workdir, run.mesh, epoch_hooks=hooks)


if __name__ == "__main__":
    cli.run(main)
