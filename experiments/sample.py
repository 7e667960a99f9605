"""Sample from a trained model: restores the newest checkpoint of a workdir.

    python experiments/sample.py --workdir checkpoints/gan_mnist --num 64 --out samples.png
    python experiments/sample.py --workdir checkpoints/gan_mnist --num 10000 --out samples.npy
    python experiments/sample.py --workdir checkpoints/vae_mnist --kind reconstructions --out r.png
    python experiments/sample.py --workdir checkpoints/vae_mnist --kind interpolations --out i.png

    python experiments/sample.py --workdir checkpoints/acgan_mnist --label 7 --num 64 --out 7.png
    python experiments/sample.py --workdir checkpoints/infogan_mnist --kind codes --out codes.png

A seed ensemble's workdir (trained with --num-seeds N) draws from run --run R (0..N-1), the run of
seed --seed + R of its training.

--kind prior (GAN or VAE): samples from the model's prior. A .png is a grid; a .npy holds float32
images in [-1, 1], shape (num, 28, 28, 1). The library call is
``jaxgen.runs.restore.sample_images(workdir, num, seed, label=...)``. A conditional GAN (CGAN,
ACGAN, infoGAN) draws class --label C (infoGAN: categorical code C), or uniform ones without it.
--kind codes (infoGAN): one grid per continuous code, swept from -1 to 1 along each row, one row
per categorical code, with one z drawn from --seed; a .npy holds (codes, 100, 28, 28, 1).
--kind reconstructions (VAE): the first --num test images, each row followed by its reconstructions.
--kind interpolations (VAE): --num rows, each a straight line in latent space between the posterior
means of two test images, in 10 steps. Test images come from --data-dir, or TFDS.
"""

import dataclasses
import os
from typing import Optional

import jax
import numpy as np

from jaxgen import cli, data, parallel, viz
from jaxgen.cli import DrawOptions
from jaxgen.config import NON_NEGATIVE_INT, POSITIVE_INT, setting
from jaxgen.errors import JaxgenError
from jaxgen.runs import latents, restore
from jaxgen.train.vae import VAETask, fixed_targets, interleave_rows
from jaxgen.workdir import write_atomically

KINDS = ("prior", "reconstructions", "interpolations", "codes")
INTERPOLATION_STEPS = 10


@dataclasses.dataclass(frozen=True)
class SampleOptions(DrawOptions):
    kind: str = setting("prior", "what to draw", choices=KINDS)
    num: Optional[int] = setting(None, "samples (default 64), test images (32) or lines (8)",
                                 POSITIVE_INT)
    out: str = setting(None, "output .png or .npy", metavar="FILE", required=True)
    label: Optional[int] = setting(None, "a conditional GAN's class to draw (--kind prior; "
                                         "default: uniform classes)", metavar="C")
    run: Optional[int] = setting(None, "the run to draw from, of a seed ensemble's workdir "
                                       "(trained with --num-seeds N): 0..N-1",
                                 NON_NEGATIVE_INT, metavar="R")


def main() -> None:
    args = cli.parse_options(SampleOptions, __doc__)
    num = args.num if args.num is not None else {"prior": 64, "reconstructions": 32,
                                                 "interpolations": 8, "codes": 100}[args.kind]
    if os.path.isdir(args.out):
        raise JaxgenError(f"--out {args.out} is a directory; pass a file name such as "
                          f"{os.path.join(args.out, 'samples.png')}.")
    ext = os.path.splitext(args.out)[1].lower()
    if ext not in (".png", ".npy"):
        raise JaxgenError(f"--out {args.out} must end in .png (a grid) or .npy (an array).")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
        raise JaxgenError(f"cannot write --out {args.out}: {out_dir} is not a writable "
                          "directory.")

    if args.label is not None and args.kind != "prior":
        raise JaxgenError(f"--label draws samples of one class: it needs --kind prior, not "
                          f"--kind {args.kind}.")

    devices = parallel.select_devices(args.accelerator)
    ncols = None
    if args.kind == "prior":
        images = restore.sample_images(args.workdir, num, seed=args.seed, devices=devices,
                                       label=args.label, log=print, run=args.run)
    elif args.kind == "codes":
        sweeps = _code_sweeps(args.workdir, args.seed, devices, args.run)
        if ext == ".npy":
            with write_atomically(args.out, "wb") as f:
                np.save(f, np.stack([np.asarray(v, np.float32) for v in sweeps.values()]))
        else:
            viz.save_image_panels(sweeps, args.out, ncols=10,
                                  title="each continuous code from -1 to 1 (left to right); "
                                        "rows: categorical codes")
        print(f"wrote the sweeps of {len(sweeps)} continuous codes to {args.out}")
        return
    else:
        task, state, epoch = restore.restore_newest(args.workdir, devices=devices, run=args.run)
        restore.require_one_run(task, args.workdir)
        print(restore.restored_line(args.workdir, epoch, args.run))
        if not isinstance(task, VAETask):
            raise JaxgenError(f"--kind {args.kind} needs a VAE run; --workdir {args.workdir} "
                              f"holds a {task.name} run (use --kind prior).")
        test = data.load_dataset(task.config.dataset, "test", args.data_dir).images
        params = state.model.params
        if args.kind == "reconstructions":
            if num > len(test):
                raise JaxgenError(f"--num {num} reconstructions need {num} test images; there "
                                  f"are {len(test)}: pass --num {len(test)} or fewer.")
            originals = test[:num]
            shown = fixed_targets(task, originals) * 2 - 1
            images = interleave_rows(shown, latents.reconstructions(task, params, originals), 8)
            ncols = 8
        else:
            if 2 * num > len(test):
                raise JaxgenError(f"--num {num} lines need {2 * num} test images; there are "
                                  f"{len(test)}.")
            images = latents.interpolations(task, params, test[:num], test[num:2 * num],
                                        steps=INTERPOLATION_STEPS)
            ncols = INTERPOLATION_STEPS
    if ext == ".npy":
        with write_atomically(args.out, "wb") as f:
            np.save(f, np.asarray(images, np.float32))
    else:
        viz.save_image_grid(images, args.out, ncols=ncols)
    print(f"wrote {len(images)} images ({args.kind}) to {args.out}")


def _code_sweeps(workdir: str, seed: int, devices, run: Optional[int]) -> dict:
    """The continuous codes' sweeps of an infoGAN run, as images."""
    task, state, epoch = restore.restore_newest(workdir, devices=devices, run=run)
    restore.require_one_run(task, workdir)
    print(restore.restored_line(workdir, epoch, run))
    sweeps = task.code_sweeps(jax.random.PRNGKey(seed)) if hasattr(task, "code_sweeps") else {}
    if not sweeps:
        raise JaxgenError(f"--kind codes needs an infoGAN run (a GAN with continuous codes); "
                          f"--workdir {workdir} holds a {task.name} run (use --kind prior).")
    generate = jax.jit(task.generate)
    return {name: parallel.to_host(generate(task.sampling_network(state.model), inputs))
            for name, inputs in sweeps.items()}


if __name__ == "__main__":
    cli.run(main)
