"""Train a VAE on MNIST-like images, then evaluate it on the test set.

    python experiments/vae_mnist.py                          # MNIST via TFDS, beta = 1
    python experiments/vae_mnist.py --beta 0 --latent-dim 2  # reconstruction term only
    python experiments/vae_mnist.py --preset burda           # Burda et al.'s 784-200-200-50
    python experiments/vae_mnist.py --dataset fashion_mnist --data-dir /path/to/idx-files

Losses are nats per image. After training it prints and writes to WORKDIR/test_eval.json the test
-ELBO, reconstruction term, KL, the k-sample importance-weighted bound on -log p(x), the mean
encoder std and the active units. Rerunning the same command resumes from the newest checkpoint.
"""

from jaxgen import cli, data
from jaxgen.cli import EvalOptions
from jaxgen.train.vae import PRESETS, VAEConfig
from jaxgen.train.vae_eval import TestEvalOptions, train_and_evaluate


def main() -> None:
    parser = cli.training_parser(__doc__, VAEConfig, presets=PRESETS)
    TestEvalOptions.add_flags(parser, "test-set evaluation after training")
    EvalOptions.add_flags(parser, "evaluation during training")
    args = cli.parse(parser, presets=PRESETS)

    config = VAEConfig.from_flags(args)
    test_eval = TestEvalOptions.from_flags(args)
    test_eval.validate()
    run = cli.prepare_run(args, config, "vae")
    hooks = cli.eval_hooks(args, config)

    train = data.load_dataset(config.dataset, "train", run.options.data_dir)
    test = data.load_dataset(config.dataset, "test", run.options.data_dir)
    run.log(f"VAE (beta={config.beta}, {config.likelihood}, latent {config.latent_dim}, "
            f"{config.architecture} {','.join(map(str, config.hidden))}) on {config.dataset}: "
            f"{len(train)} training images, batch {config.batch_size}, {run.describe()}")
    train_and_evaluate(config, train.images, test.images, run.workdir, run.mesh,
                       iwae_k=test_eval.iwae_k, eval_images=test_eval.eval_images,
                       epoch_hooks=hooks, log=run.log, profile_steps=run.options.profile_range)


if __name__ == "__main__":
    cli.run(main)
