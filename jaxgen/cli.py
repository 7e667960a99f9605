"""What the experiment scripts share: flags derived from the declared settings, start-up, and
one ``error:`` line for bad input.

A training script's parser is :func:`training_parser`: a flag per field of its config (see
``jaxgen.config``), then the run's own options (:class:`RunOptions`) and the multi-host ones
(:class:`DistributedOptions`). :func:`prepare_run` checks them all before anything is loaded or
written; :func:`run` turns a ``JaxgenError`` into one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import threading
from typing import Any, Callable, Optional

from jaxgen import checkpoint_reports, parallel, runtime
from jaxgen.config import NON_NEGATIVE_INT, POSITIVE_INT, SEED, Check, Settings, inherited, setting
from jaxgen.errors import JaxgenError
from jaxgen.runs.evaluate import EvaluateEvery
from jaxgen.workdir import check_workdir

DEFAULT_CHECKPOINTS = "checkpoints"  # under the current directory
EVAL_SAMPLES = 10000  # samples per evaluation during training, unless --eval-samples says


def _is_step_range(text: str) -> bool:
    first, sep, last = text.partition("..")
    return bool(sep) and first.isdigit() and last.isdigit() and 1 <= int(first) <= int(last)


PROFILE_RANGE = Check(_is_step_range, "FIRST..LAST with 1 <= FIRST <= LAST, such as 10..20")


@dataclasses.dataclass(frozen=True)
class RunOptions(Settings):
    """Where a training run reads and writes, and on what devices (not saved with checkpoints)."""

    data_dir: Optional[str] = setting(
        None, "directory with the four IDX files (train-images-idx3-ubyte[.gz], ...); default: "
              "load through tensorflow-datasets", metavar="DIR")
    workdir: Optional[str] = setting(
        None, "checkpoints, pictures and logs; rerunning the same command here resumes "
              "(default: checkpoints/<model>_<dataset>)", metavar="DIR")
    accelerator: str = setting("auto", "device platform to run on (auto: JAX's default)",
                               choices=parallel.ACCELERATORS)
    compilation_cache: bool = setting(
        True, "keep compiled programs in JAX's persistent compilation cache "
              f"(JAX_COMPILATION_CACHE_DIR, else {runtime.CACHE_HINT}), so a rerun or resume "
              "starts without compiling again")
    profile_steps: Optional[str] = setting(
        None, "write a jax.profiler trace of these global steps (1-based, inclusive) into "
              "WORKDIR/tensorboard/, e.g. 10..20", PROFILE_RANGE, metavar="FIRST..LAST")

    @property
    def profile_range(self) -> Optional[tuple[int, int]]:
        """--profile-steps as (first, last), or None."""
        if self.profile_steps is None:
            return None
        first, last = self.profile_steps.split("..")
        return int(first), int(last)


@dataclasses.dataclass(frozen=True)
class DrawOptions(Settings):
    """What the scripts that draw from a finished run share (sample.py, evaluate.py); each
    declares its own options in a subclass and parses them with :func:`parse_options`."""

    workdir: str = setting(None, "a training run's workdir; its newest readable checkpoint is "
                                 "used", metavar="DIR", required=True)
    data_dir: Optional[str] = inherited(RunOptions, "data_dir", None)
    seed: int = setting(0, "key of the draws: latent codes (and evaluate.py's real subsets)",
                        SEED)
    accelerator: str = inherited(RunOptions, "accelerator", "auto")


def parse_options(options_class: type, doc: str, argv=None) -> Settings:
    """A script's declared options (a :class:`~jaxgen.config.Settings` subclass) from the
    command line, checked; its docstring ``doc`` is the ``--help`` text."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    options_class.add_flags(parser)
    options = options_class.from_flags(parser.parse_args(argv))
    options.validate()
    return options


@dataclasses.dataclass(frozen=True)
class DistributedOptions(Settings):
    """A multi-host run: the same command on every host (see ``jaxgen.parallel``)."""

    coordinator_address: Optional[str] = setting(
        None, "address of process 0 (or 'auto' on SLURM/MPI/TPU-pod clusters); "
              "JAX_COORDINATOR_ADDRESS also works", metavar="HOST:PORT")
    num_processes: Optional[int] = setting(None, "number of processes in the run", POSITIVE_INT)
    process_id: Optional[int] = setting(None, "this process's index, 0 on the coordinator's "
                                        "host", NON_NEGATIVE_INT)
    distributed_timeout: int = setting(300, "seconds to wait for every process to join the "
                                       "run", POSITIVE_INT, metavar="SECONDS")

    def validate(self) -> None:
        super().validate()
        address = self.coordinator_address
        if address is not None and address != "auto":
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise JaxgenError(f"--coordinator-address must be HOST:PORT (e.g. "
                                  f"10.0.0.1:1234) or auto, got {address}.")


@dataclasses.dataclass(frozen=True)
class EvalOptions(Settings):
    """Scoring samples during training (``jaxgen.runs.evaluate.EvaluateEvery``)."""

    eval_every: Optional[int] = setting(None, "score samples after every N epochs and the last "
                                        "(default: never); needs --classifier", POSITIVE_INT,
                                        metavar="N")
    classifier: Optional[str] = setting(None, "workdir of experiments/train_classifier.py on "
                                        "the same dataset (with --eval-every)", metavar="DIR")
    eval_samples: Optional[int] = setting(None, f"samples (and real images) per evaluation "
                                          f"(with --eval-every; default: {EVAL_SAMPLES})",
                                          POSITIVE_INT, metavar="N")

    def validate(self) -> None:
        super().validate()
        if self.eval_every is None:
            given = [flag for flag, value in (("--classifier", self.classifier),
                                              ("--eval-samples", self.eval_samples))
                     if value is not None]
            if given:
                verb, pronoun = ("takes", "it") if len(given) == 1 else ("take", "them")
                raise JaxgenError(f"{' and '.join(given)} only {verb} effect with --eval-every "
                                  f"N; add --eval-every N (score samples every N epochs) or drop "
                                  f"{pronoun}.")
        elif self.classifier is None:
            raise JaxgenError("--eval-every needs --classifier DIR, the workdir of a classifier "
                              "trained by experiments/train_classifier.py on the same dataset.")


def training_parser(doc: str, config_class: type, exclude: tuple = (),
                    presets: Optional[dict] = None, parents: tuple = (),
                    defaults: Optional[dict] = None) -> argparse.ArgumentParser:
    """A training script's parser: its docstring as help, the flags of ``parents``, a flag per
    field of ``config_class`` (but ``exclude``; ``defaults``: field -> the script's own default),
    the run options and the multi-host flags. With ``presets`` (name -> config), ``--preset
    NAME`` makes that config's values the defaults; flags given explicitly still win."""
    parser = argparse.ArgumentParser(description=doc, parents=list(parents),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if presets:
        parser.add_argument("--preset", choices=sorted(presets), default=None,
                            help="a published configuration; flags given explicitly override "
                                 "it: " + "; ".join(f"{name}: {_describe_preset(config)}"
                                                    for name, config in presets.items()))
    config_class.add_flags(parser, exclude=exclude, defaults=defaults)
    RunOptions.add_flags(parser)
    DistributedOptions.add_flags(parser, "multi-host")
    return parser


def _describe_preset(config: Settings) -> str:
    default = type(config)()
    return ", ".join(f"{k}={v}" for k, v in config.to_dict().items()
                     if getattr(default, k) != getattr(config, k))


def parse(parser: argparse.ArgumentParser, argv=None, presets: Optional[dict] = None):
    """``parser.parse_args``, with ``--preset``'s values as the defaults when one is given."""
    if presets:
        known, _ = parser.parse_known_args(argv)
        if known.preset:
            parser.set_defaults(**presets[known.preset].to_dict())
    return parser.parse_args(argv)


_NOT_GIVEN = object()


def given_flags(parser: argparse.ArgumentParser, argv=None) -> set[str]:
    """The destinations of the flags the command line gives (abbreviated or not), as opposed to
    those left at their defaults."""
    # argparse fills in a default only where the namespace lacks the attribute: a namespace
    # holding a marker for every destination keeps the marker where no flag was given.
    destinations = vars(parser.parse_args(argv))
    probe = argparse.Namespace(**{dest: _NOT_GIVEN for dest in destinations})
    values = vars(parser.parse_args(argv, namespace=probe))
    return {dest for dest, value in values.items() if value is not _NOT_GIVEN}


@dataclasses.dataclass(frozen=True)
class Run:
    """What ``prepare_run`` settles for a training script."""
    mesh: Any  # jax.sharding.Mesh over the chosen devices
    workdir: str
    log: Callable[[str], None]  # print on process 0, nothing on the others
    options: RunOptions

    def describe(self) -> str:
        return f"{parallel.describe_mesh(self.mesh)}; workdir {os.path.abspath(self.workdir)}"


def prepare_run(args: argparse.Namespace, config: Settings, kind: str) -> Run:
    """The start-up every training script shares, before any data is loaded or anything written:
    every setting's check, the devices (the multi-host runtime first), the batch split over
    them, and ``--workdir`` (default ``checkpoints/<kind>_<dataset>``, e.g. gan_mnist)."""
    config.validate()
    options = RunOptions.from_flags(args)
    options.validate()
    distributed = DistributedOptions.from_flags(args)
    distributed.validate()
    if all(hasattr(args, f.name) for f in EvalOptions.declared()):  # a script with its flags
        EvalOptions.from_flags(args).validate()
    workdir = (options.workdir if options.workdir is not None
               else os.path.join(DEFAULT_CHECKPOINTS, f"{kind}_{config.dataset}"))
    check_workdir(workdir)
    runtime.use_compilation_cache(options.compilation_cache)
    mesh = start_devices(options.accelerator, distributed)
    parallel.check_batch_size(config.batch_size, mesh)
    log = print if parallel.is_main_process() else (lambda _: None)
    return Run(mesh, workdir, log, options)


def eval_hooks(args: argparse.Namespace, config) -> list:
    """The epoch hooks the evaluation flags ask for (none without --eval-every); reads the
    classifier's checkpoint, so call it after ``prepare_run``."""
    options = EvalOptions.from_flags(args)
    if options.eval_every is None:
        return []
    num_samples = EVAL_SAMPLES if options.eval_samples is None else options.eval_samples
    return [EvaluateEvery(options.classifier, options.eval_every, num_samples, args.data_dir,
                          dataset=config.dataset, seed=config.seed)]


def start_devices(accelerator: str = "auto",
                  distributed: Optional[DistributedOptions] = None):
    """Starts the multi-host runtime if asked, then the mesh over the chosen devices."""
    distributed = distributed or DistributedOptions()
    parallel.initialize_distributed(distributed.coordinator_address, distributed.num_processes,
                                    distributed.process_id, distributed.distributed_timeout)
    return parallel.make_mesh(parallel.select_devices(accelerator))


def run(main: Callable[[], None]) -> None:
    """Runs a script's main: a ``JaxgenError`` becomes one ``error:`` line and exit status 2;
    Ctrl-C and SIGTERM one line saying how to resume (exit status 130 and 143).
    Standard output is line-buffered, so a log redirected to a file or a pipe shows each line
    when it is printed, not minutes later. Host memory is reused from step to step
    (:func:`jaxgen.runtime.reuse_host_memory`), and compiled programs are kept in JAX's
    persistent compilation cache (:func:`jaxgen.runtime.use_compilation_cache`), whose
    unreadable entries are replaced (:func:`jaxgen.runtime.repairing_compilation_cache`); what
    a failed restore's abandoned reads would print is dropped
    (:func:`jaxgen.checkpoint_reports.drop_abandoned_reads`)."""
    if hasattr(sys.stdout, "reconfigure"):  # a real text stream (not, e.g., a notebook's)
        sys.stdout.reconfigure(line_buffering=True)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    if main_thread:  # stop at once, from the handler: an exception raised by a signal that
        # lands in a garbage-collection callback (JAX registers one) would be swallowed
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
    runtime.reuse_host_memory()
    checkpoint_reports.drop_abandoned_reads()
    runtime.use_compilation_cache()  # a training script's --no-compilation-cache: off again
    try:
        with runtime.repairing_compilation_cache():
            main()
    except JaxgenError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # where no handler of ours was installed (another thread)
        _stop(*_SIGNAL_LINES[signal.SIGINT])
    finally:
        if main_thread:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _stop(message: str, status: int) -> None:
    """Says ``message`` and ends the process at once. A checkpoint being written is left as
    kill -9 would leave it, which the next run discards before resuming from the last whole one;
    the background threads of XLA and orbax, which an orderly interpreter shutdown would cut off
    mid-work (with their tracebacks, or a crash), are not waited for."""
    with contextlib.suppress(Exception):  # (a handler may interrupt a write to them)
        sys.stdout.flush()
        sys.stderr.flush()
    os.write(2, (message + "\n").encode())
    os._exit(status)


_SIGNAL_LINES = {
    signal.SIGINT: ("interrupted; rerun the same command to resume from the last checkpoint.",
                    130),
    signal.SIGTERM: ("terminated (SIGTERM); rerun the same command to resume from the last "
                     "checkpoint.", 128 + signal.SIGTERM)}


def _on_signal(signum, frame):
    _stop(*_SIGNAL_LINES[signum])
