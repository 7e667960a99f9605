"""Train the GANs of the collection side by side, score each, and write the comparison.

    python experiments/gan_collection.py --dataset fashion_mnist --data-dir /path/to/idx-files \\
        --epochs 5 --classifier checkpoints/classifier_fashion_mnist

Each GAN of --gan-types (default: every registered one, and the vanilla GAN again with a moving
average of G's weights) trains with its own defaults, the same --epochs, --seed and data, in
WORKDIR/<type>/ as experiments/gan_mnist.py would (so each run resumes), then is scored as
experiments/evaluate.py scores it (its eval.json). A type with the suffix +EMA (e.g. GAN+EMA)
trains with --g-ema at --ema-decay, in WORKDIR/<type>_ema/, and is scored on the average's
samples. A shared setting
given here (--lr-d, --batchnorm-scale-init, ...) applies to every GAN; one not given keeps each
GAN's own default. A GAN whose workdir already holds this run scored as asked (its
config.json, and an eval.json of its last epoch with the same classifier, --num-samples and
--seed) is neither trained nor scored again: the tables are made from the files each run
wrote. Writes into --workdir:
  collection.md, collection.csv   one row per GAN: FID, Inception score, classes covered, class
                                  KL, precision, recall, median seconds per epoch; the real-data
                                  floor. With --num-seeds N, each GAN trains N runs (seeds
                                  --seed, --seed + 1, ...) in one program: the table gives
                                  mean ± std over them, the CSV one row per run
  collection.png                  each GAN's fixed-noise grid after its last epoch
                                  (<TYPE>_epochNNN.png), side by side
  collection_fid.csv, .png        with --eval-every N: every GAN's FID after every N epochs (and
                                  the last), a row per GAN, epoch (and run); the curves of all
                                  GANs on one figure (each its runs' mean and each run). Each
                                  GAN's own eval_history.jsonl and <TYPE>_fid.png are in its
                                  workdir; a GAN trained before without --eval-every has none
Each GAN's workdir also keeps machine.json, the devices and host its epochs were timed on, so a
table made later from runs trained elsewhere (e.g. on an accelerator) names them.
"""

import csv
import dataclasses
import json
import os
import sys
from typing import Optional

import numpy as np

from jaxgen import cli, data, parallel, viz
from jaxgen.config import POSITIVE_INT, Check, Settings, setting
from jaxgen.errors import JaxgenError
from jaxgen.metrics import METRICS
from jaxgen.runs.evaluate import (
    EVAL_FILE,
    EvaluateEvery,
    classifier_meta,
    evaluate_run,
    read_history,
)
from jaxgen.train import gan_variants, loop
from jaxgen.train.gan import GANConfig
from jaxgen.workdir import write_atomically

# A conditional GAN's scores: the share of samples of label y the classifier calls y.
LABELLED = ("label_accuracy",)
# Lucic et al. (2018), "Are GANs Created Equal?", Fashion-MNIST, best FID found (Inception
# features, so only their order compares with the classifier-feature FID here).
PUBLISHED_FID = {"GAN": 26.5, "LSGAN": 30.7, "WGAN": 21.5, "WGAN_GP": 24.5, "DRAGAN": 27.7,
                 "BEGAN": 22.9}


EMA = "+EMA"  # a row's suffix: the GAN trained with a moving average of G's weights


def split_row(row: str) -> tuple[str, bool]:
    """(the GAN type, whether it keeps a moving average of G) of a --gan-types entry."""
    return (row[:-len(EMA)], True) if row.endswith(EMA) else (row, False)


@dataclasses.dataclass(frozen=True)
class CollectionOptions(Settings):
    gan_types: tuple[str, ...] = setting(
        tuple(gan_variants.OBJECTIVES) + ("GAN" + EMA,), "the GANs to train and compare, "
        "comma-separated; TYPE+EMA: TYPE with a moving average of G's weights",
        Check(lambda v: len(v) > 0 and len(set(v)) == len(v)
              and all(split_row(t)[0] in gan_variants.OBJECTIVES for t in v),
              "distinct names among " + ", ".join(gan_variants.OBJECTIVES)
              + ", each optionally with the suffix +EMA"), metavar="T,T")
    ema_decay: float = setting(0.999, "--g-ema of the +EMA rows",
                               Check(lambda v: 0 < v < 1, "a number in (0, 1)"), metavar="DECAY")
    classifier: str = setting("", "workdir of experiments/train_classifier.py on the same "
                              "dataset: the feature space of the scores",
                              Check(bool, "the workdir of a trained classifier"), metavar="DIR")
    num_samples: int = setting(10000, "samples (and real images) per score",
                               Check(lambda v: v >= 2, "at least 2"), metavar="N")
    tabulate_only: bool = setting(False, "train and score nothing: make the table and figures "
                                  "from each GAN's files in --workdir (runs trained elsewhere, "
                                  "e.g. on an accelerator)")
    eval_every: Optional[int] = setting(None, "also score every GAN during training, after "
                                        "every N epochs and the last (FID-over-epochs curves: "
                                        "collection_fid.png)", POSITIVE_INT, metavar="N")


def main() -> None:
    parser = cli.training_parser(__doc__, GANConfig, exclude=("g_ema",))  # the +EMA rows
    CollectionOptions.add_flags(parser, "the comparison")
    args = parser.parse_args()
    options = CollectionOptions.from_flags(args)
    options.validate()
    base = GANConfig.from_flags(args, g_ema=0.0)
    # A shared setting the command gives applies to every GAN; the others keep each GAN's own
    # default (EBGAN's BatchNorm scales start U[0, 1), the others' at 1).
    given = cli.given_flags(parser)
    shared = {f.name: getattr(base, f.name) for f in dataclasses.fields(GANConfig)
              if f.name in given}
    configs = {}
    for row in options.gan_types:
        name, ema = split_row(row)
        config = gan_variants.OBJECTIVES[name].config_class(**shared)
        configs[row] = (name, dataclasses.replace(config, g_ema=options.ema_decay) if ema
                        else config)
    run = cli.prepare_run(args, base, "gan_collection")
    classifier_epoch, _ = classifier_meta(options.classifier)  # checked before any training
    hooks = ([] if options.eval_every is None or options.tabulate_only else
             [EvaluateEvery(options.classifier, options.eval_every, options.num_samples,
                            run.options.data_dir, dataset=base.dataset, seed=base.seed,
                            samples_flag="--num-samples")])

    train = None
    rows, grids, floor, histories = [], {}, {}, {}
    for row, (name, config) in configs.items():
        workdir = os.path.join(run.workdir, row.lower().replace(EMA.lower(), "_ema"))
        result = (scored_files(workdir, row, name, config, options) if options.tabulate_only
                  else scored_run(workdir, name, config, options, classifier_epoch))
        if result is None:
            run.log(f"--- {row} on {base.dataset}, {base.epochs} epochs: {workdir}")
            if train is None:
                train = data.load_dataset(base.dataset, "train", run.options.data_dir)
            before = len(epoch_times_of(workdir, name))
            _, history = loop.train(gan_variants.task_class(name)(config), train, workdir,
                                    run.mesh, log=run.log, epoch_hooks=hooks,
                                    profile_steps=run.options.profile_range)
            if len(history.per_epoch_time) > before and parallel.is_main_process():
                # what timed its latest epochs, for a table made later from its files
                with write_atomically(os.path.join(workdir, MACHINE_FILE)) as f:
                    json.dump({"machine": machine(run.mesh)}, f)
            result = evaluate_run(workdir, options.classifier, options.num_samples,
                                  data_dir=run.options.data_dir, seed=base.seed,
                                  devices=list(run.mesh.devices.flat), log=run.log)
        else:
            run.log(f"--- {row}: trained and scored already ({workdir})")
        epoch_times = epoch_times_of(workdir, name)
        rows.append({"gan": row, **{k: result[k] for k in METRICS + LABELLED if k in result},
                     "seconds_per_epoch": float(np.median(epoch_times)),
                     "machine": trained_on(workdir),
                     "published_fid": PUBLISHED_FID.get(row, ""),
                     **{k: result[k] for k in ("std", "runs") if k in result}})
        grids[row] = os.path.join(workdir, f"{name}_epoch{base.epochs:03d}.png")
        histories[row] = read_history(workdir)
        floor.update(result["floor"])  # label accuracy's floor comes with a conditional GAN
    if parallel.is_main_process():
        write_tables(rows, floor, run.workdir, base, options)
        viz.save_picture_panels(grids, os.path.join(run.workdir, "collection.png"),
                                title=f"after {base.epochs} epochs on {base.dataset}, the same "
                                      "fixed noise", per_row=4)
        run.log(f"wrote {os.path.join(run.workdir, 'collection.md')} and collection.png")
        if options.eval_every is not None:
            write_fid_curves({k: v for k, v in histories.items() if v}, run.workdir, base,
                             options, run.log)


def scored_run(workdir: str, name: str, config: GANConfig, options: CollectionOptions,
               classifier_epoch: int) -> Optional[dict]:
    """The eval.json of ``workdir`` if it scores the run this command asks for (the settings a
    resumed run may not change, and --epochs), trained to its last epoch, with this classifier
    checkpoint: else None (the GAN is then trained, or resumed, and scored)."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            trained = json.load(f)
        with open(os.path.join(workdir, EVAL_FILE)) as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None
    try:
        same = (trained["task"] == name and not config.conflicts(trained["config"])
                and trained["config"]["epochs"] == config.epochs
                and result["model"]["checkpoint_epoch"] == config.epochs
                and result["num_samples"] == options.num_samples
                and result["seed"] == config.seed
                and result["classifier"]["path"] == os.path.abspath(options.classifier)
                and result["classifier"]["checkpoint_epoch"] == classifier_epoch)
    except (KeyError, TypeError):
        return None
    return result if same else None


MACHINE_FILE = "machine.json"  # in each GAN's workdir: the machine its epochs were timed on


def trained_on(workdir: str) -> str:
    """The machine a GAN of the collection was trained on (its ``machine.json``)."""
    try:
        with open(os.path.join(workdir, MACHINE_FILE)) as f:
            return json.load(f)["machine"]
    except (OSError, ValueError, KeyError):
        return "an unrecorded machine"


def scored_files(workdir: str, row: str, name: str, config: GANConfig,
                 options: CollectionOptions) -> dict:
    """The eval.json of a GAN trained and scored as the command says (--tabulate-only): its
    epochs, runs, samples and seed, with its history and last grid beside it."""
    try:
        with open(os.path.join(workdir, EVAL_FILE)) as f:
            result = json.load(f)
        scored = {"--epochs": result["model"]["checkpoint_epoch"],
                  "--num-seeds": result["model"].get("num_runs", 1),
                  "--num-samples": result["num_samples"], "--seed": result["seed"]}
    except (OSError, ValueError, KeyError):
        raise JaxgenError(f"--tabulate-only: {workdir} holds no scores of {row} ({EVAL_FILE}); "
                          f"train and score it first, or leave it out of --gan-types.") from None
    asked = {"--epochs": config.epochs, "--num-seeds": config.num_seeds,
             "--num-samples": options.num_samples, "--seed": config.seed}
    for flag, value in scored.items():
        if value != asked[flag]:
            raise JaxgenError(f"--tabulate-only: {row} in {workdir} was trained and scored with "
                              f"{flag} {value}, not {asked[flag]}; pass {flag} {value}.")
    for needed in (f"{name}_history.json", f"{name}_epoch{config.epochs:03d}.png"):
        if not os.path.exists(os.path.join(workdir, needed)):
            raise JaxgenError(f"--tabulate-only: {workdir} lacks {needed}, which the table "
                              f"needs; bring back the whole workdir of {row}.")
    return result


def epoch_times_of(workdir: str, name: str) -> list[float]:
    """The per-epoch times of the run in ``workdir`` ([] before its first epoch)."""
    path = os.path.join(workdir, f"{name}_history.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)["per_epoch_time"]


def machine(mesh) -> str:
    """The devices, and the CPU's model name where /proc/cpuinfo has it."""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = "an unnamed CPU"
    return f"{parallel.describe_mesh(mesh)}; host {cpu}, {os.cpu_count()} cores"


def write_tables(rows: list, floor: dict, workdir: str, base: GANConfig,
                 options: CollectionOptions) -> None:
    """collection.md and collection.csv: a row per GAN; with --num-seeds N > 1 the table gives
    each score as mean ± std over the N runs and the CSV a row per run (its run and seed)."""
    labelled = [k for k in LABELLED if any(k in row for row in rows)]
    columns = ["gan", *METRICS, *labelled, "seconds_per_epoch", "published_fid"]
    ensembles = base.num_seeds > 1
    with write_atomically(os.path.join(workdir, "collection.csv"), newline="") as f:
        if ensembles:
            writer = csv.DictWriter(f, fieldnames=["gan", "run", "seed", *columns[1:]],
                                    extrasaction="ignore")
            writer.writeheader()
            writer.writerows({**row, **run} for row in rows for run in row["runs"])
        else:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows + [{"gan": "real test images (floor)", **floor,
                        "seconds_per_epoch": "", "published_fid": ""}]:
        std = row.get("std", {})
        lines.append("| " + " | ".join(_fmt(row.get(k, "")) + (f" ± {_fmt(std[k])}" if k in std
                                                                else "")
                                        for k in columns) + " |")
    seeds = (f"{base.num_seeds} runs each (seeds {base.seed}..{base.seed + base.num_seeds - 1},"
             " trained together; each score the mean ± standard deviation over the runs, "
             "collection.csv each run's; seconds per epoch of all the runs together)"
             if ensembles else f"seed {base.seed}")
    named = list(dict.fromkeys(row["machine"] for row in rows))
    machines = (named[0] if len(named) == 1 else
                "; ".join(f"{m} ({', '.join(r['gan'] for r in rows if r['machine'] == m)})"
                          for m in named))
    width = ("" if base.width == 1 else
             f"G and D at {base.width:g} times the reference's widths (--width), ")
    text = f"""# The GAN collection on {base.dataset}

Command: `python {' '.join(sys.argv)}`

{base.epochs} epochs each at batch {base.batch_size}, {seeds}, {width}each GAN with its own
defaults; {options.num_samples} samples scored against {options.num_samples} training images in
the feature space of the classifier in `{options.classifier}`; the floor row scores
{options.num_samples} real test images the same way. Median seconds per epoch on {machines}.
`published_fid`: Lucic et al. (2018),
Fashion-MNIST, in Inception features: only their order compares. A `+EMA` row is that GAN
trained with a moving average of G's weights (decay {options.ema_decay:g}), scored on the
average's samples.

{chr(10).join(lines)}

![the last epoch's grids](collection.png)
"""
    with write_atomically(os.path.join(workdir, "collection.md")) as f:
        f.write(text)


def write_fid_curves(histories: dict[str, list[dict]], workdir: str, base: GANConfig,
                     options: CollectionOptions, log) -> None:
    """collection_fid.csv (a row per GAN, evaluation and run) and collection_fid.png (FID
    against the epoch, every GAN in its colour: the runs' mean, and each run's thin line); the
    figure leaves out, and says so, a GAN scored after other epochs than the most."""
    if not histories:
        log("no GAN has scores over its epochs (eval_history.jsonl, written when it trains "
            "with --eval-every): collection_fid.csv and .png not written.")
        return
    ensembles = base.num_seeds > 1
    with write_atomically(os.path.join(workdir, "collection_fid.csv"), newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["gan", "epoch", *(["run", "seed"] if ensembles else []), "fid",
                         "floor_fid"])
        for gan, rows in histories.items():
            for r in rows:
                runs = r["runs"] if ensembles else [r]
                for i, one in enumerate(runs):
                    writer.writerow([gan, r["epoch"], *([i, base.seed + i] if ensembles else []),
                                     one["fid"], r["floor"]["fid"]])
    schedules = [tuple(r["epoch"] for r in rows) for rows in histories.values()]
    epochs = max(set(schedules), key=schedules.count)  # the most GANs' epochs
    curves = {gan: ([[r["runs"][i]["fid"] for r in rows] for i in range(base.num_seeds)]
                    if ensembles else [r["fid"] for r in rows])
              for gan, rows in histories.items() if tuple(r["epoch"] for r in rows) == epochs}
    left_out = [gan for gan in histories if gan not in curves]
    if left_out:
        log(f"collection_fid.png leaves out {', '.join(left_out)}: scored after other epochs "
            f"than {', '.join(map(str, epochs))} (collection_fid.csv has them).")
    floor = next(iter(histories.values()))[-1]["floor"]["fid"]
    runs = f", {base.num_seeds} seeds each" if ensembles else ""
    viz.plot_score_curves(curves, floor, os.path.join(workdir, "collection_fid.png"), epochs,
                          ylabel=f"FID ({options.num_samples} samples)",
                          title=f"the collection on {base.dataset}{runs}")
    log("wrote collection_fid.csv and collection_fid.png")


def _fmt(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return str(value)
    return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"


if __name__ == "__main__":
    cli.run(main)
