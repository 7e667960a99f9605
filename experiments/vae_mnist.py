"""Train a VAE on MNIST-like images, then evaluate it on the test set.

    python experiments/vae_mnist.py                                   # MNIST via TFDS, beta = 1
    python experiments/vae_mnist.py --beta 0 --latent-dim 2           # reconstruction term only
    python experiments/vae_mnist.py --preset burda                    # Burda et al.'s 784-200-200-50
    python experiments/vae_mnist.py --dataset fashion_mnist --data-dir /path/to/idx-files

Losses are nats per image. After training it prints and writes to WORKDIR/test_eval.json the test
-ELBO, reconstruction term, KL, the k-sample importance-weighted bound on -log p(x), the mean
encoder std and the active units. Rerunning the same command resumes from the newest checkpoint.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxgen import cli  # noqa: E402


def main() -> None:
    from jaxgen.train.vae import VAEConfig

    parser = cli.training_parser(__doc__, VAEConfig)
    parser.add_argument("--beta", type=float, default=VAEConfig().beta,
                        help="weight of the KL term: 1 = the ELBO, 0 = reconstruction only "
                             "(%(default)s)")
    cli.add_vae_flags(parser)
    cli.add_eval_flags(parser)
    cli.apply_preset(parser)
    args = parser.parse_args()

    config = cli.config_from_flags(VAEConfig, args)
    cli.check_vae_eval_flags(args)
    cli.check_eval_flags(args)
    run = cli.prepare_run(args, config, "vae")
    hooks = cli.eval_hooks_from_flags(args)

    from jaxgen import data
    from jaxgen.train.vae import train_and_evaluate

    train = data.load_dataset(args.dataset, "train", args.data_dir)
    test = data.load_dataset(args.dataset, "test", args.data_dir)
    run.log(f"VAE (beta={config.beta}, {config.likelihood}, latent {config.latent_dim}, "
            f"{config.architecture} {','.join(map(str, config.hidden))}) on {args.dataset}: "
            f"{len(train)} training images, batch {config.batch_size}, {run.describe()}")
    train_and_evaluate(config, train.images, test.images, run.workdir, run.mesh,
                       iwae_k=args.iwae_k, eval_images=args.eval_images, epoch_hooks=hooks,
                       log=run.log)


if __name__ == "__main__":
    cli.run(main)
