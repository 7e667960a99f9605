"""The seed-scale collection on one accelerator, in two commands: every GAN of the collection for
the reference's 50 epochs, several seeds each, scored every 5 epochs, and the VAE at beta = 1 and
beta = 0 beside them.

    python benchmarks/seed_scale.py --out DIR --part 1 --data-dir /path/to/fashion-mnist
    python benchmarks/seed_scale.py --out DIR --part 2 --data-dir /path/to/fashion-mnist
    python benchmarks/seed_scale.py --out DIR --part 1 --smoke --accelerator cpu   # rehearsal

Part 1 trains GAN, LSGAN, WGAN, WGAN_GP, DRAGAN, EBGAN and BEGAN; part 2 CGAN, ACGAN, infoGAN,
HINGE, RaGAN and GAN+EMA, then the VAE ablation (``experiments/kl/ablation.py``, beta 1 and 0).
Each is ``experiments/gan_collection.py --num-seeds N --eval-every 5`` (each GAN's runs in one
compiled program, FID over the epochs) with the committed classifier, within ``--budget``
seconds: a GAN not finished by then is stopped and left out (rerun the part to train it).

Writes ``DIR/seed_scale_part<k>.tar.gz`` (every finished GAN's workdir without its checkpoints:
grids, GIF, curves, histories, eval.json, eval_history.jsonl, machine.json; the VAE's tables
and pictures), ``DIR/seed_scale_part<k>.log`` and ``DIR/seed_scale_part<k>.json`` (each
command's wall time). Back on any machine, unpack both archives into one folder and run
``gan_collection.py --tabulate-only`` with every GAN, the same flags and that folder's
``collection/`` as ``--workdir``: the table, ``collection.png`` and ``collection_fid.png`` are
made from the files (the epochs' times with the accelerator each ``machine.json`` names).

``--smoke`` runs the same commands at tiny sizes on synthetic data (2 epochs of 4 steps, 2 seeds,
256 samples), so they can be rehearsed on a CPU before a device is lent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile

from accelerator import (
    ROOT,
    Log,
    add_device_flags,
    base_env,
    data_dir_error,
    run,
    write_synthetic_idx,
)

PARTS = {1: ("GAN", "LSGAN", "WGAN", "WGAN_GP", "DRAGAN", "EBGAN", "BEGAN"),
         2: ("CGAN", "ACGAN", "infoGAN", "HINGE", "RaGAN", "GAN+EMA")}
GAN_TYPES = PARTS[1] + PARTS[2]


def commands(args, data_dir: str, work: str) -> list[tuple[str, list]]:
    """(label, command) of the part: its GANs, then (part 2) the VAE ablation."""
    epochs, every, samples = (2, 1, 256) if args.smoke else (args.epochs, 5, 10000)
    shared = ["--dataset", "fashion_mnist", "--data-dir", data_dir, "--accelerator",
              args.accelerator, "--epochs", str(epochs), "--num-seeds", str(args.num_seeds),
              "--classifier", args.classifier, "--num-samples", str(samples)]
    out = [("collection", [sys.executable, os.path.join(ROOT, "experiments", "gan_collection.py"),
                           *shared, "--gan-types", ",".join(PARTS[args.part]), "--eval-every",
                           str(every), "--workdir", os.path.join(work, "collection")])]
    if args.part == 2:
        vae = ["--iwae-k", "100", "--eval-images", "256"] if args.smoke else [
            "--iwae-k", "1000", "--eval-images", "1000"]
        out.append(("vae", [sys.executable, os.path.join(ROOT, "experiments", "kl", "ablation.py"),
                            *shared, *vae, "--workdir", os.path.join(work, "vae")]))
    return out


def archive(work: str, path: str) -> list[str]:
    """Every file under ``work`` but checkpoints and the compilation cache, as ``path``; returns
    the folders archived."""
    skip = {"checkpoints", "xla-cache", "data", ".lock"}
    with tarfile.open(path + ".tmp", "w:gz") as tar:
        for name in sorted(os.listdir(work)):
            if name not in skip:
                tar.add(os.path.join(work, name), arcname=name,
                        filter=lambda info: None if set(info.name.split("/")) & skip else info)
    os.replace(path + ".tmp", path)
    return sorted(n for n in os.listdir(work) if n not in skip)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="where the archive, the log and the JSON go")
    parser.add_argument("--part", type=int, required=True, choices=sorted(PARTS),
                        help="1: the unconditional GANs; 2: the conditional ones, HINGE, RaGAN, "
                             "GAN+EMA and the VAE")
    add_device_flags(parser, "the samples")
    parser.add_argument("--epochs", type=int, default=50, metavar="N",
                        help="epochs of every run (%(default)s, the reference's)")
    parser.add_argument("--num-seeds", type=int, default=5, metavar="N",
                        help="runs of each GAN, trained together (%(default)s)")
    parser.add_argument("--budget", type=float, default=560, metavar="SECONDS",
                        help="the part's time; what is not finished by then is left out "
                             "(%(default)s)")
    args = parser.parse_args()
    if args.smoke:
        args.num_seeds = min(args.num_seeds, 2)
    out = os.path.abspath(args.out)
    work = os.path.join(out, "work")
    os.makedirs(work, exist_ok=True)
    data_dir = (write_synthetic_idx(os.path.join(work, "data")) if args.smoke and
                args.data_dir is None else args.data_dir)
    error = data_dir_error(data_dir)
    if error:
        print(error, file=sys.stderr)
        return 2
    stem = os.path.join(out, f"seed_scale_part{args.part}")
    report = Log(stem + ".log", args.budget)
    env = base_env(argparse.Namespace(out=out, accelerator=args.accelerator))
    record = {"part": args.part, "gans": PARTS[args.part], "smoke": args.smoke,
              "num_seeds": args.num_seeds, "commands": {}}
    for label, command in commands(args, data_dir, work):
        if report.left() < 30:
            report.say(f"-- {label}: skipped, {report.left():.0f} s left")
            record["commands"][label] = {"skipped": True}
            continue
        r = run(report, label, command, report.left() - 15, env)
        record["commands"][label] = {k: r[k] for k in ("returncode", "timed_out", "wall_s")}
    record["archived"] = archive(work, stem + ".tar.gz")
    record["elapsed_s"] = args.budget - report.left()
    with open(stem + ".json", "w") as f:
        json.dump(record, f, indent=1)
    report.say(f"wrote {stem}.tar.gz, .log and .json")
    return 0 if all(c.get("returncode") == 0 for c in record["commands"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
