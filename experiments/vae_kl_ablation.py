"""What does training a VAE without the KL term do? Trains beta = 1 and beta = 0 with the same seed,
architecture and budget, evaluates both on the test set, and writes the comparison.

    python experiments/vae_kl_ablation.py --dataset fashion_mnist --data-dir /path/to/idx-files \\
        --epochs 30 --workdir checkpoints/vae_kl_ablation

Writes into --workdir:
  ablation.csv, ablation.md   one row per beta: recon, kl, -ELBO, iwae_nll (nats per image),
                              mean_sigma, mu_std, active_units, and the prior-sample quality
  beta_<b>/                   each model's own run (checkpoints, grids, curves, test_eval.json)
  beta_<b>_latent2/           the same model with a 2-D latent, for the pictures
  latent_scatter.png          test posterior means coloured by class (2-D latent), per beta
  latent_grid.png             the decoder over a grid of [-2, 2]^2 of latent space, per beta
  prior_samples.png           samples from the N(0, I) prior, per beta
  reconstructions.png         test images (odd rows) and reconstructions (even rows), per beta

Every run resumes; rerunning the same command only does what is missing.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxgen import cli  # noqa: E402


def main() -> None:
    import dataclasses

    from jaxgen.errors import JaxgenError
    from jaxgen.train.vae import VAEConfig

    parser = cli.training_parser(__doc__, VAEConfig)
    cli.add_vae_flags(parser)
    parser.add_argument("--betas", type=cli.comma_floats, default=(1.0, 0.0), metavar="B,B",
                        help="KL weights to compare (default: 1,0)")
    parser.add_argument("--picture-latent-dim", type=int, default=2, metavar="D",
                        help="latent size of the companion runs drawn as latent scatter and grid "
                             "(default 2; 0 skips them)")
    parser.add_argument("--num-samples", type=int, default=10000, metavar="N",
                        help="prior samples for the quality figures (%(default)s)")
    parser.add_argument("--classifier", default=None, metavar="DIR",
                        help="workdir of experiments/train_classifier.py on the same dataset: "
                             "prior samples are scored in its feature space (FID, IS, coverage, "
                             "precision, recall); without it, the Frechet distance in pixel space")
    cli.apply_preset(parser)
    args = parser.parse_args()

    base = cli.config_from_flags(VAEConfig, argparse.Namespace(**{**vars(args), "beta": 1.0}))
    configs = [dataclasses.replace(base, beta=b) for b in args.betas]
    for config in configs:
        config.validate()
    if args.picture_latent_dim not in (0, 2):
        raise JaxgenError(f"--picture-latent-dim must be 2 (draw the latent space) or 0 (skip), "
                          f"got {args.picture_latent_dim}.")
    if args.num_samples < 2:
        raise JaxgenError(f"--num-samples must be at least 2, got {args.num_samples}.")
    cli.check_vae_eval_flags(args)
    run = cli.prepare_run(args, base, "vae_kl_ablation")

    from jaxgen import data
    from jaxgen.train.ablation import classifier_quality, pixel_quality, run_kl_ablation

    train = data.load_dataset(args.dataset, "train", args.data_dir)
    test = data.load_dataset(args.dataset, "test", args.data_dir)
    quality = (classifier_quality(args.classifier, args.dataset, args.num_samples, args.data_dir)
               if args.classifier else pixel_quality(train, args.num_samples))
    run.log(f"KL ablation on {args.dataset}: betas {', '.join(f'{b:g}' for b in args.betas)}, "
            f"{base.epochs} epochs each, {run.describe()}")
    run_kl_ablation(configs, train, test, run.workdir, run.mesh, iwae_k=args.iwae_k,
                    eval_images=args.eval_images, picture_latent_dim=args.picture_latent_dim,
                    num_samples=args.num_samples, quality=quality, log=run.log)


if __name__ == "__main__":
    cli.run(main)
