"""What the experiment scripts share: the common flags, start-up, and error reporting."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any, Callable

from jaxgen.errors import JaxgenError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CHECKPOINTS = os.path.join(REPO_ROOT, "checkpoints")


def training_parser(doc: str, defaults) -> argparse.ArgumentParser:
    """A training script's parser: its docstring as help, and the flags every training script
    has (``add_run_flags``); ``defaults`` is the experiment's config class."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(parser, defaults)
    return parser


def add_run_flags(parser: argparse.ArgumentParser, defaults) -> None:
    """Flags every training script has; ``defaults`` is the experiment's config class."""
    from jaxgen.data import DATASETS
    from jaxgen.parallel import ACCELERATORS

    d = defaults()
    parser.add_argument("--dataset", default=d.dataset, choices=sorted(DATASETS),
                        help="dataset to train on (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="directory with the four IDX files (train-images-idx3-ubyte[.gz], "
                             "...); default: load through tensorflow-datasets")
    parser.add_argument("--epochs", type=int, default=d.epochs,
                        help="epochs to train in total; rerunning with more continues "
                             "(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help="global batch size, split over all devices (default: %(default)s)")
    parser.add_argument("--workdir", default=None, metavar="DIR",
                        help="checkpoints, pictures and logs; rerunning the same command here "
                             "resumes (default: checkpoints/<model>_<dataset>)")
    parser.add_argument("--accelerator", default="auto", choices=ACCELERATORS,
                        help="device platform to run on (default: %(default)s: JAX's default)")
    parser.add_argument("--seed", type=int, default=d.seed,
                        help="root of every random number of the run (default: %(default)s)")
    parser.add_argument("--log-every", type=int, default=d.log_every,
                        help="steps between log lines (default: %(default)s)")
    parser.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints,
                        help="how many of the newest per-epoch checkpoints to keep "
                             "(default: %(default)s)")
    parser.add_argument("--steps-per-call", type=int, default=d.steps_per_call,
                        help="train steps per compiled call (a lax.scan); e.g. a whole epoch "
                             "on an accelerator; the same steps, rounded differently "
                             "(default: %(default)s)")
    add_distributed_flags(parser)


def config_from_flags(config_cls, args: argparse.Namespace):
    """The experiment's config from the parsed flags: every config field has a flag."""
    return config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)})


def comma_separated(kind: type, example: str) -> Callable[[str], tuple]:
    """An argparse type for comma-separated lists of ``kind`` (int or float), e.g. ``400,400``."""
    noun = "integers" if kind is int else "numbers"

    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {noun} such as {example}, got {text!r}") from None

    return parse


comma_ints = comma_separated(int, "400,400")
comma_floats = comma_separated(float, "1,0")


@dataclasses.dataclass(frozen=True)
class Run:
    """What ``prepare_run`` settles for a training script."""
    mesh: Any  # jax.sharding.Mesh over the chosen devices
    workdir: str
    log: Callable[[str], None]  # print on process 0, nothing on the others

    def describe(self) -> str:
        return f"{describe_devices(self.mesh)}; workdir {os.path.abspath(self.workdir)}"


def prepare_run(args: argparse.Namespace, config, kind: str) -> Run:
    """The start-up every training script shares, before any data is loaded or anything written:
    the config's own checks, the devices (the multi-host runtime first), the batch split over
    them, and ``--workdir`` (default ``checkpoints/<kind>_<dataset>``, e.g. gan_mnist)."""
    from jaxgen import parallel
    from jaxgen.train import loop

    config.validate()
    workdir = args.workdir or os.path.join(DEFAULT_CHECKPOINTS, f"{kind}_{args.dataset}")
    mesh = start_devices(args)
    parallel.check_batch_size(config.batch_size, mesh)
    loop.check_workdir(workdir)
    log = print if parallel.is_main_process() else (lambda _: None)
    return Run(mesh, workdir, log)


def add_vae_flags(parser: argparse.ArgumentParser) -> None:
    """The VAE's model, objective and test-evaluation flags (vae_mnist.py, vae_kl_ablation.py);
    --beta is the training script's own."""
    from jaxgen.models.vae import ACTIVATIONS, ARCHITECTURES
    from jaxgen.train.vae import LIKELIHOODS, LR_SCHEDULES, PRESETS, VAEConfig

    d = VAEConfig()
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="a published configuration; flags given explicitly override it "
                             "(burda: 784-200-200-50 tanh Bernoulli VAE of Burda et al. 2016, "
                             "batch 20, Adam eps 1e-4, their 3280-epoch schedule)")
    parser.add_argument("--latent-dim", type=int, default=d.latent_dim,
                        help="latent size: 2 for pictures, 20-50 for quality (%(default)s)")
    parser.add_argument("--likelihood", default=d.likelihood, choices=LIKELIHOODS,
                        help="decoder: Bernoulli on dynamically binarised images, or Gaussian "
                             "of fixed std --sigma on intensities in [0, 1] (%(default)s)")
    parser.add_argument("--sigma", type=float, default=d.sigma,
                        help="the Gaussian decoder's fixed std (%(default)s)")
    parser.add_argument("--mc-samples", type=int, default=d.mc_samples, metavar="K",
                        help="samples of z per image in the reconstruction term (%(default)s)")
    parser.add_argument("--architecture", default=d.architecture, choices=ARCHITECTURES,
                        help="encoder/decoder networks (%(default)s)")
    parser.add_argument("--hidden", type=comma_ints, default=d.hidden, metavar="W,W",
                        help="hidden layer widths, encoder order (default: 400,400)")
    parser.add_argument("--activation", default=d.activation, choices=sorted(ACTIVATIONS),
                        help="hidden activation (%(default)s)")
    parser.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (%(default)s)")
    parser.add_argument("--adam-eps", type=float, default=d.adam_eps,
                        help="Adam epsilon (%(default)s)")
    parser.add_argument("--lr-schedule", default=d.lr_schedule, choices=LR_SCHEDULES,
                        help="constant, or burda: lr * 10^(-i/7) for 3^i epochs (%(default)s)")
    parser.add_argument("--iwae-k", type=int, default=5000, metavar="K",
                        help="importance samples for the test -log p(x) bound (%(default)s)")
    parser.add_argument("--eval-images", type=int, default=None, metavar="N",
                        help="evaluate on the first N test images (default: all; 0: skip)")


def apply_preset(parser: argparse.ArgumentParser, argv=None) -> None:
    """Makes --preset's values the defaults, so explicit flags still win."""
    from jaxgen.train.vae import PRESETS

    known, _ = parser.parse_known_args(argv)
    if known.preset:
        parser.set_defaults(**PRESETS[known.preset])


def check_vae_eval_flags(args: argparse.Namespace) -> None:
    from jaxgen.errors import JaxgenError

    if args.iwae_k < 1:
        raise JaxgenError(f"--iwae-k must be a positive integer, got {args.iwae_k}.")
    if args.eval_images is not None and args.eval_images < 0:
        raise JaxgenError(f"--eval-images must be 0 (skip) or positive, got {args.eval_images}.")


EVAL_SAMPLES = 10000  # samples per evaluation during training, unless --eval-samples says


def add_eval_flags(parser: argparse.ArgumentParser) -> None:
    """Flags for scoring samples during training (``jaxgen.metrics.EvaluateEvery``)."""
    group = parser.add_argument_group(
        "evaluation during training",
        "Score samples every N epochs against the real data; see experiments/evaluate.py.")
    group.add_argument("--eval-every", type=int, default=None, metavar="N",
                       help="score samples after every N epochs and the last (default: never); "
                            "needs --classifier")
    group.add_argument("--classifier", default=None, metavar="DIR",
                       help="workdir of experiments/train_classifier.py on the same dataset "
                            "(with --eval-every)")
    group.add_argument("--eval-samples", type=int, default=None, metavar="N",
                       help=f"samples (and real images) per evaluation (with --eval-every; "
                            f"default: {EVAL_SAMPLES})")


def check_eval_flags(args: argparse.Namespace) -> None:
    """The evaluation flags' own consistency, checked before any device starts."""
    if args.eval_every is None:
        flags = (("--classifier", args.classifier), ("--eval-samples", args.eval_samples))
        given = [flag for flag, value in flags if value is not None]
        if given:
            verb = "takes" if len(given) == 1 else "take"
            raise JaxgenError(f"{' and '.join(given)} only {verb} effect with --eval-every N; "
                              "add --eval-every N (score samples every N epochs) or drop "
                              f"{'it' if len(given) == 1 else 'them'}.")
    elif args.classifier is None:
        raise JaxgenError("--eval-every needs --classifier DIR, the workdir of a classifier "
                          "trained by experiments/train_classifier.py on the same dataset.")


def eval_hooks_from_flags(args: argparse.Namespace) -> list:
    """The epoch hooks the evaluation flags ask for (none without --eval-every); reads the
    classifier's checkpoint, so call it after ``prepare_run`` (and ``check_eval_flags``)."""
    check_eval_flags(args)
    if args.eval_every is None:
        return []
    from jaxgen.metrics import EvaluateEvery

    num_samples = EVAL_SAMPLES if args.eval_samples is None else args.eval_samples
    return [EvaluateEvery(args.classifier, args.eval_every, num_samples, args.data_dir,
                          dataset=args.dataset, seed=args.seed)]


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "multi-host", "Run the same command on every host; see jaxgen.parallel.")
    group.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                       help="address of process 0 (or 'auto' on SLURM/MPI/TPU-pod clusters); "
                            "JAX_COORDINATOR_ADDRESS also works")
    group.add_argument("--num-processes", type=int, default=None)
    group.add_argument("--process-id", type=int, default=None)


def start_devices(args: argparse.Namespace):
    """Starts the multi-host runtime if asked, then the mesh over the chosen devices."""
    from jaxgen import parallel

    parallel.initialize_distributed(args.coordinator_address, args.num_processes,
                                    args.process_id)
    return parallel.make_mesh(parallel.select_devices(args.accelerator))


def describe_devices(mesh) -> str:
    import jax

    kinds = sorted({d.device_kind for d in mesh.devices.flat})
    return (f"{mesh.size} {'/'.join(kinds)} device(s) on {jax.process_count()} process(es), "
            f"platform {mesh.devices.flat[0].platform}")


def run(main: Callable[[], None]) -> None:
    """Runs a script's main: a ``JaxgenError`` becomes one ``error:`` line and exit status 2.
    Standard output is line-buffered, so a log redirected to a file or a pipe shows each line
    when it is printed, not minutes later. Host memory is reused from step to step
    (:func:`jaxgen.parallel.reuse_host_memory`)."""
    if hasattr(sys.stdout, "reconfigure"):  # a real text stream (not, e.g., a notebook's)
        sys.stdout.reconfigure(line_buffering=True)
    from jaxgen import parallel
    parallel.reuse_host_memory()
    try:
        main()
    except JaxgenError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint.",
              file=sys.stderr)
        sys.exit(130)
