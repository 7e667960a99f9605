"""Sample from a trained generator: restores the newest checkpoint of a workdir.

    python experiments/sample.py --workdir checkpoints/gan_mnist --num 64 --out samples.png
    python experiments/sample.py --workdir checkpoints/gan_mnist --num 10000 --out samples.npy

A .png is a grid; a .npy holds float32 images in [-1, 1], shape (num, 28, 28, 1).
The library call is ``jaxgen.train.restore.sample_images(workdir, num, seed)``; it works for
every generative run (GAN, VAE).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxgen import cli  # noqa: E402
from jaxgen.errors import JaxgenError  # noqa: E402
from jaxgen.parallel import ACCELERATORS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, metavar="DIR", help="a training run's workdir")
    parser.add_argument("--num", type=int, default=64, help="number of samples (%(default)s)")
    parser.add_argument("--out", required=True, metavar="FILE", help="output .png or .npy")
    parser.add_argument("--seed", type=int, default=0, help="key of the latent draws")
    parser.add_argument("--accelerator", default="auto", choices=ACCELERATORS)
    args = parser.parse_args()

    ext = os.path.splitext(args.out)[1].lower()
    if ext not in (".png", ".npy"):
        raise JaxgenError(f"--out {args.out} must end in .png (a grid) or .npy (an array).")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
        raise JaxgenError(f"cannot write --out {args.out}: {out_dir} is not a writable "
                          "directory.")

    import numpy as np

    from jaxgen import parallel, viz
    from jaxgen.train.restore import sample_images

    images = sample_images(args.workdir, args.num, seed=args.seed,
                    devices=parallel.select_devices(args.accelerator))
    if ext == ".npy":
        np.save(args.out, images.astype(np.float32))
    else:
        viz.save_image_grid(images, args.out)
    print(f"wrote {args.num} samples to {args.out}")


if __name__ == "__main__":
    cli.run(main)
