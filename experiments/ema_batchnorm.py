"""Why a GAN+EMA run scores worse than its live G: G's averaged weights beside the live G's
BatchNorm statistics, or beside statistics of their own.

    python experiments/ema_batchnorm.py \
        --workdir experiments/results/gan_collection_fashion_mnist/gan_ema \
        --classifier experiments/results/classifier_fashion_mnist \
        --data-dir /usr/share/datasets/fashion-mnist

Scores three generators of one ``--g-ema`` run, on the same z: the live G; the moving average
of G's weights with the live G's BatchNorm running statistics; and the average as jaxgen samples
it, with BatchNorm statistics of its own (``GANTask.standing_statistics``: its batch statistics
in training mode on 4096 draws of its inputs). Prints a table and writes
``WORKDIR/ema_batchnorm.json``.
"""

import dataclasses
import json
import os

import jax

from jaxgen import cli, parallel
from jaxgen.cli import DrawOptions
from jaxgen.config import POSITIVE_INT, setting
from jaxgen.errors import JaxgenError
from jaxgen.keys import named_key
from jaxgen.metrics.evaluator import Evaluator
from jaxgen.runs.evaluate import load_classifier
from jaxgen.runs.restore import draw_samples, require_one_run, restore_run
from jaxgen.workdir import write_atomically


@dataclasses.dataclass(frozen=True)
class Options(DrawOptions):
    classifier: str = setting(None, "workdir of experiments/train_classifier.py on the run's "
                                    "dataset", metavar="DIR", required=True)
    num_samples: int = setting(10000, "samples scored per generator", POSITIVE_INT, metavar="N")


def main() -> None:
    args = cli.parse_options(Options, __doc__)
    devices = parallel.select_devices(args.accelerator)[:1]
    task, state = restore_run(args.workdir, devices=devices)
    require_one_run(task, args.workdir)
    if "g_ema" not in getattr(state.model, "extra", {}):
        raise JaxgenError(f"--workdir {args.workdir} holds no moving average of G's weights: "
                          "pass a run trained with --g-ema DECAY.")
    live = state.model.g
    average = live.replace(params=state.model.extra["g_ema"])
    own = task.sampling_network(state.model)
    evaluator = Evaluator(load_classifier(args.classifier, devices=devices), task.config.dataset,
                          args.num_samples, args.data_dir, args.seed, 3, "--num-samples")
    key = named_key(jax.random.PRNGKey(args.seed), "sample", 1)
    rows = {}
    for name, g in (("live G", live), ("average, live G's BatchNorm statistics", average),
                    ("average, its own BatchNorm statistics", own)):
        model = state.model.replace(g=g, extra={})  # sampled as drawn: no average to prefer
        images = draw_samples(task, model, args.num_samples, key)
        rows[name] = evaluator.evaluate(images)
        print(f"{name}: FID {rows[name]['fid']:.2f}", flush=True)
    print(f"{'':42s}{'FID':>8s}{'IS':>7s}{'class KL':>10s}{'precision':>11s}{'recall':>8s}")
    for name, row in {**rows, "real test images (floor)": evaluator.floor}.items():
        print(f"{name:42s}{row['fid']:8.2f}{row['inception_score']:7.2f}{row['class_kl']:10.4f}"
              f"{row['precision']:11.3f}{row['recall']:8.3f}")
    with write_atomically(os.path.join(args.workdir, "ema_batchnorm.json")) as f:
        json.dump({"rows": rows, "floor": evaluator.floor, "num_samples": args.num_samples,
                   "seed": args.seed}, f, indent=2, default=float)
    print(f"wrote {os.path.join(args.workdir, 'ema_batchnorm.json')}")


if __name__ == "__main__":
    cli.run(main)
