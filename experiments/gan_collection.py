"""Train the GANs of the collection side by side, score each, and write the comparison.

    python experiments/gan_collection.py --dataset fashion_mnist --data-dir /path/to/idx-files \\
        --epochs 5 --classifier checkpoints/classifier_fashion_mnist

Each GAN of --gan-types (default: every registered one) trains with its own defaults, the same
--epochs, --seed and data, in WORKDIR/<type>/ as experiments/gan_mnist.py would (so each run
resumes, and a finished one is not trained again), then is scored as experiments/evaluate.py
scores it (its eval.json). Writes into --workdir:
  collection.md, collection.csv   one row per GAN: FID, Inception score, classes covered, class
                                  KL, precision, recall, seconds per epoch; the real-data floor
  collection.png                  each GAN's fixed-noise grid after its last epoch, side by side
"""

import csv
import dataclasses
import os
import sys

import numpy as np

from jaxgen import cli, data, parallel, viz
from jaxgen.config import Check, Settings, setting
from jaxgen.metrics import METRICS
from jaxgen.runs.evaluate import evaluate_run
from jaxgen.runs.restore import restore_run
from jaxgen.train import gan_variants, loop
from jaxgen.train.gan import GANConfig

# Lucic et al. (2018), "Are GANs Created Equal?", Fashion-MNIST, best FID found (Inception
# features, so only their order compares with the classifier-feature FID here).
PUBLISHED_FID = {"GAN": 26.5, "LSGAN": 30.7, "WGAN": 21.5, "WGAN_GP": 24.5, "DRAGAN": 27.7,
                 "BEGAN": 22.9}


@dataclasses.dataclass(frozen=True)
class CollectionOptions(Settings):
    gan_types: tuple[str, ...] = setting(
        tuple(gan_variants.OBJECTIVES), "the GANs to train and compare, comma-separated",
        Check(lambda v: len(v) > 0 and len(set(v)) == len(v)
              and all(t in gan_variants.OBJECTIVES for t in v),
              "distinct names among " + ", ".join(gan_variants.OBJECTIVES)), metavar="T,T")
    classifier: str = setting("", "workdir of experiments/train_classifier.py on the same "
                              "dataset: the feature space of the scores",
                              Check(bool, "the workdir of a trained classifier"), metavar="DIR")
    num_samples: int = setting(10000, "samples (and real images) per score",
                               Check(lambda v: v >= 2, "at least 2"), metavar="N")


def main() -> None:
    parser = cli.training_parser(__doc__, GANConfig)
    CollectionOptions.add_flags(parser, "the comparison")
    args = parser.parse_args()
    options = CollectionOptions.from_flags(args)
    options.validate()
    base = GANConfig.from_flags(args)
    configs = {}
    for name in options.gan_types:
        config_class = gan_variants.OBJECTIVES[name].config_class
        shared = {f.name: getattr(base, f.name) for f in dataclasses.fields(GANConfig)}
        configs[name] = config_class(**shared)
    run = cli.prepare_run(args, base, "gan_collection")

    train = data.load_dataset(base.dataset, "train", run.options.data_dir)
    rows, grids = [], {}
    for name, config in configs.items():
        workdir = os.path.join(run.workdir, name.lower())
        run.log(f"--- {name} on {base.dataset}, {base.epochs} epochs: {workdir}")
        _, history = loop.train(gan_variants.task_class(name)(config), train.images, workdir,
                                run.mesh, log=run.log)
        result = evaluate_run(workdir, options.classifier, options.num_samples,
                              data_dir=run.options.data_dir, seed=base.seed,
                              devices=list(run.mesh.devices.flat), log=run.log)
        rows.append({"gan": name, **{k: result[k] for k in METRICS},
                     "seconds_per_epoch": float(np.mean(history.per_epoch_time)),
                     "published_fid": PUBLISHED_FID.get(name, "")})
        task, state = restore_run(workdir, devices=list(run.mesh.devices.flat))
        grids[name] = parallel.to_host(task.generate(state.model.g, task.fixed_noise(state.rng)))
        floor = result["floor"]
    if parallel.is_main_process():
        write_tables(rows, floor, run.workdir, base, options, machine(run.mesh))
        viz.save_image_panels(grids, os.path.join(run.workdir, "collection.png"), ncols=8,
                              title=f"after {base.epochs} epochs on {base.dataset}, the same "
                                    "fixed noise")
        run.log(f"wrote {os.path.join(run.workdir, 'collection.md')} and collection.png")


def machine(mesh) -> str:
    """The devices, and the CPU's model name where /proc/cpuinfo has it."""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = "an unnamed CPU"
    return f"{cli.describe_devices(mesh)}; host {cpu}, {os.cpu_count()} cores"


def write_tables(rows: list, floor: dict, workdir: str, base: GANConfig,
                 options: CollectionOptions, machine: str) -> None:
    columns = ["gan", *METRICS, "seconds_per_epoch", "published_fid"]
    with open(os.path.join(workdir, "collection.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows + [{"gan": "real test images (floor)", **floor,
                        "seconds_per_epoch": "", "published_fid": ""}]:
        lines.append("| " + " | ".join(_fmt(row.get(k, "")) for k in columns) + " |")
    text = f"""# The GAN collection on {base.dataset}

Command: `python {' '.join(sys.argv)}`

{base.epochs} epochs each at batch {base.batch_size}, seed {base.seed}, each GAN with its own
defaults; {options.num_samples} samples scored against {options.num_samples} training images in
the feature space of the classifier in `{options.classifier}`; the floor row scores
{options.num_samples} real test images the same way. Seconds per epoch on {machine}.
`published_fid`: Lucic et al. (2018),
Fashion-MNIST, in Inception features: only their order compares.

{chr(10).join(lines)}

![the last epoch's grids](collection.png)
"""
    with open(os.path.join(workdir, "collection.md"), "w") as f:
        f.write(text)


def _fmt(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return str(value)
    return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"


if __name__ == "__main__":
    cli.run(main)
