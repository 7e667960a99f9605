"""The whole accelerator check in one command: correctness, speed of every model, the seed's run.

    python benchmarks/accelerator.py --out DIR --data-dir /path/to/fashion-mnist   # on a GPU
    python benchmarks/accelerator.py --out DIR --smoke --accelerator cpu           # rehearsal

Runs, in this order, each part as its own process with its own time limit, all of them within
``--budget`` seconds (a part that no longer fits is skipped and says so):

- ``environment``: the device, the driver, the versions of JAX and the libraries;
- ``seed_run``: the seed's run, ``experiments/gan_mnist.py`` on Fashion-MNIST for 50 epochs with
  all its outputs, its wall time from the command to "Training finish", and its log;
- ``epochs``: for every GAN of the collection and the VAE, one epoch as ``gan_mnist.py`` runs it
  (937 steps at batch 64 on random images, the default ``--steps-per-call``: one program per
  epoch): compile time, seconds per epoch, steps per second, device memory;
- ``resume``: a run killed with ``kill -9`` during its third epoch and rerun, against the same
  run uninterrupted: are the per-step losses and the final parameters bit-identical?
- ``tests``: the GPU-relevant tests of the suite run on the device (the step against the
  reference's transcription, the epoch program against single steps, resume, sampling and
  restore);
- ``fid``: ``experiments/evaluate.py`` on the seed's run with the committed classifier;
- ``precision``: one step of the vanilla GAN on the device at each ``--precision`` and in
  bfloat16, against the reference's step transcribed in float32 on the CPU;
- ``ensembles``: seed ensembles of 1, 2, 4, 8, 16 and 32 runs of the vanilla GAN stepped in one
  program (``benchmarks/gan_step.py --num-seeds``, batch 64, both forms): steps per second, runs
  x steps per second, and one ensemble step's time against one solo step's;
- ``variants``: the vanilla GAN's epoch with each lever (the CPU-written convolution forms,
  ``--precision highest``, ``--dtype bfloat16``, one step a call) and the penalised GANs in
  bfloat16;
- ``profile``: a ``--profile-steps`` trace of the vanilla GAN's second epoch program, summed by
  operation (``benchmarks/trace_summary.py``);
- ``deterministic``: the resume check again under XLA's deterministic GPU ops, if the first
  was not bit-identical, with its epoch time.

Writes ``DIR/accelerator.json`` (every figure), ``DIR/accelerator.log`` (every part's output)
and ``DIR/seed_run.tar.gz`` (the seed run's pictures, history, metrics and evaluation; no
checkpoints). ``--smoke`` runs everything at tiny sizes on synthetic data (2-epoch runs,
4-step epochs), so the command can be rehearsed on a CPU before a device is lent; its seed run,
as long as the resume check's runs, is that check's uninterrupted run. ``--width`` narrows the
GAN of the ``gan_mnist.py`` runs and of the ``ensembles`` part (the test suite's rehearsal).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPT = os.path.abspath(__file__)
CLASSIFIER = os.path.join(ROOT, "experiments", "results", "classifier_fashion_mnist")
WHEELS = os.path.join(".device-data", "wheels")  # pip download tensorboardX --no-deps -d ...
GANS = ("GAN", "LSGAN", "WGAN", "WGAN_GP", "DRAGAN", "EBGAN", "BEGAN", "CGAN", "ACGAN", "infoGAN")
PARTS = ("environment", "seed_run", "epochs", "resume", "tests", "fid", "precision", "ensembles",
         "variants", "profile", "deterministic")
# The seed ensembles' sizes the device times (benchmarks/gan_step.py --num-seeds), and --smoke's.
ENSEMBLE_SIZES = {False: "1,2,4,8,16,32", True: "1,2"}
# The suite's tests that say something about the device: the step, the epoch program, resume,
# restore and sampling (the others are about CPU devices, the command line or files).
DEVICE_TESTS = (
    "tests/test_gan_step.py::test_one_step_changes_both_models",
    "tests/test_gan_step.py::test_step_is_the_reference_step",
    "tests/test_epoch_program.py::test_the_epoch_program_moves_nothing_to_or_from_the_host",
    "tests/test_epoch_program.py::test_by_default_the_loop_runs_one_program_per_epoch_and_logs"
    "_every_step",
    "tests/test_train_loop.py::test_resume_is_bit_identical",
    "tests/test_train_loop.py::test_outputs_of_a_run",
    "tests/test_train_loop.py::test_several_steps_per_call_train_the_same_gan",
    "tests/test_train_loop.py::test_every_step_gets_its_batch_key_and_state",
    "tests/test_old_checkpoints.py",
    "tests/test_gan_variants.py::test_every_variant_trains_and_samples",
    "tests/test_precision.py",
)
SMOKE_IMAGES = 256  # --smoke: synthetic training images, 4 steps an epoch at batch 64
DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
SEED_RUN_FILES = ("*.png", "*.gif", "*_history.json", "metrics.jsonl", "config.json",
                  "eval.json", "run.log")


# ============================================================================ the orchestrator
class Log:
    """A check's log file (and stdout), and the time left of its budget."""

    def __init__(self, path: str, budget: float):
        self.budget, self.start = budget, time.time()
        self.log_file = open(path, "w")

    def left(self) -> float:
        return self.budget - (time.time() - self.start)

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log_file.write(text + "\n")
        self.log_file.flush()


class Report(Log):
    """The JSON and the log, written after every part so that a cut-off run keeps what ran."""

    def __init__(self, out: str, budget: float):
        super().__init__(os.path.join(out, "accelerator.log"), budget)
        self.out = out
        self.data = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "budget_s": budget,
                     "parts": {}}

    def part(self, name: str, result: dict) -> None:
        self.data["parts"][name] = result
        self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = time.time() - self.start
        with open(os.path.join(self.out, "accelerator.json.tmp"), "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(os.path.join(self.out, "accelerator.json.tmp"),
                   os.path.join(self.out, "accelerator.json"))


def run(report: Log, label: str, command: list, limit: float, env: dict = None,
        log_path: str = None) -> dict:
    """Runs ``command`` in its own process group for at most ``limit`` seconds, its output into
    the log (and ``log_path``); returns its exit status, wall time and output."""
    report.say(f"$ {' '.join(command)}")
    start = time.time()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=ROOT, start_new_session=True)
    lines, timed_out = [], False
    deadline = start + limit
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while True:
        if time.time() > deadline:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            break
        if sel.select(timeout=0.5):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            report.say(f"  [{label}] {line.rstrip()}")
    proc.wait()
    seconds = time.time() - start
    if log_path:
        with open(log_path, "w") as f:
            f.write("\n".join(lines) + "\n")
    status = "timed out" if timed_out else f"exit {proc.returncode}"
    report.say(f"  [{label}] {status} after {seconds:.1f} s")
    return {"returncode": None if timed_out else proc.returncode, "timed_out": timed_out,
            "wall_s": seconds, "lines": lines}


def results(lines: list) -> list:
    """The JSON rows a worker printed (lines starting with RESULT)."""
    return [json.loads(line[len("RESULT "):]) for line in lines if line.startswith("RESULT ")]


def base_env(args) -> dict:
    env = {k: v for k, v in os.environ.items()}
    env["PYTHONUNBUFFERED"] = "1"
    # Pure-Python wheels carried to an image that lacks them (tensorboardX, say) are imported
    # from the wheel files themselves: nothing is installed.
    wheels = sorted(glob.glob(os.path.join(ROOT, WHEELS, "*-py3-none-any.whl")))
    env["PYTHONPATH"] = os.pathsep.join([ROOT, *wheels, env.get("PYTHONPATH", "")])
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(args.out, "work", "xla-cache")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.accelerator == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    return env


def gan_command(args, workdir: str, epochs: int, *more) -> list:
    width = () if args.width == 1 else ("--width", args.width)
    return [sys.executable, os.path.join(ROOT, "experiments", "gan_mnist.py"), "--accelerator",
            args.accelerator, "--dataset", "fashion_mnist", "--data-dir", args.data_dir,
            "--workdir", workdir, "--epochs", str(epochs), *map(str, width + more)]


def part_environment(report, args, env):
    r = run(report, "environment", worker(args, "environment"), min(120, report.left()), env)
    rows = results(r["lines"])
    smi = shutil.which("nvidia-smi")
    info = rows[0] if rows else {}
    if smi:
        out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True)
        info["nvidia_smi"] = out.stdout.strip()
        report.say(f"  [environment] nvidia-smi: {info['nvidia_smi']}")
    return {**info, "ok": r["returncode"] == 0}


def part_seed_run(report, args, env):
    workdir = os.path.join(args.out, "work", "seed")
    shutil.rmtree(workdir, ignore_errors=True)
    epochs = 2 if args.smoke else 50
    r = run(report, "seed_run", gan_command(args, workdir, epochs), min(420, report.left()), env,
            log_path=None)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "run.log"), "w") as f:
        f.write("\n".join(r["lines"]) + "\n")
    finish = None
    out = {"epochs": epochs, "wall_s": r["wall_s"], "returncode": r["returncode"],
           "timed_out": r["timed_out"], "workdir": workdir}
    for line in r["lines"]:
        if line.startswith("Avg one epoch time"):
            out["reference_line"] = line
        if line.startswith("Training finish"):
            finish = line
    history = glob.glob(os.path.join(workdir, "GAN_history.json"))
    if history:
        with open(history[0]) as f:
            h = json.load(f)
        out["per_epoch_time"] = h.get("per_epoch_time")
        out["total_time"] = h.get("total_time")
    out["finished"] = finish is not None
    return out


def part_epochs(report, args, env, which="all"):
    r = run(report, "epochs", worker(args, "epochs", "--which", which), min(300, report.left()),
            env)
    return {"rows": results(r["lines"]), "returncode": r["returncode"],
            "timed_out": r["timed_out"], "wall_s": r["wall_s"]}


def part_tests(report, args, env):
    """The device's tests at JAX's default precision, then the reference step's test again with
    every float32 product at full precision."""
    test_env = dict(env)
    if args.accelerator != "cpu":  # the device first, the CPU beside it for the tests that ask
        test_env["JAX_PLATFORMS"] = "cuda,cpu" if args.accelerator == "gpu" else "tpu,cpu"
    pytest = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider",
              "--no-header", "-o", "addopts=", "-m", "not perf"]
    reference_test = DEVICE_TESTS[1]
    out = {}
    for name, tests, extra in (
            ("default_precision", [reference_test] if args.smoke else list(DEVICE_TESTS), {}),
            ("highest_precision", [reference_test], {"JAX_DEFAULT_MATMUL_PRECISION": "highest"})):
        if report.left() < 30:
            out[name] = {"skipped": f"{report.left():.0f} s left"}
            continue
        r = run(report, "tests", pytest + tests, min(200, report.left()), {**test_env, **extra})
        out[name] = {"returncode": r["returncode"], "timed_out": r["timed_out"],
                     "wall_s": r["wall_s"], "summary": r["lines"][-12:]}
    return out


def _kill_during_epoch(report, args, env, workdir, epochs, kill_after_epoch, epoch_s, limit):
    """Starts the run, kills it with SIGKILL half an epoch after the checkpoint of
    ``kill_after_epoch`` is written; returns when it is dead."""
    command = gan_command(args, workdir, epochs)
    report.say(f"$ {' '.join(command)}   (killed with SIGKILL during epoch "
               f"{kill_after_epoch + 1})")
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=ROOT, start_new_session=True)
    marker = os.path.join(workdir, "checkpoints", str(kill_after_epoch))
    start = time.time()
    while not os.path.isdir(marker) and proc.poll() is None and time.time() - start < limit:
        time.sleep(0.02)
    time.sleep(epoch_s / 2)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = sorted(int(n) for n in os.listdir(os.path.dirname(marker)) if n.isdigit()) \
        if os.path.isdir(os.path.dirname(marker)) else []
    report.say(f"  [resume] killed={killed} after {time.time() - start:.1f} s; "
               f"checkpoints then: {saved}")
    return killed, saved


RESUME_EPOCHS = {True: 2, False: 5}  # the resume check's runs, with and without --smoke


def part_resume(report, args, env, name="resume", epoch_s=1.0, uninterrupted=None):
    """A run killed with SIGKILL during an epoch, then resumed, against the same command
    uninterrupted: ``uninterrupted``, the workdir of a finished run of it (the seed run's when
    it is one), or a run made here."""
    epochs = RESUME_EPOCHS[args.smoke]
    kill_after = epochs // 2  # killed during the next epoch
    base = os.path.join(args.out, "work", name)
    shutil.rmtree(base, ignore_errors=True)
    killed_dir = os.path.join(base, "killed")
    killed, saved = _kill_during_epoch(report, args, env, killed_dir, epochs, kill_after,
                                       epoch_s, min(240, report.left()))
    rerun = run(report, name, gan_command(args, killed_dir, epochs), min(240, report.left()),
                env)
    if uninterrupted is None:
        clean_dir = os.path.join(base, "clean")
        clean = run(report, name, gan_command(args, clean_dir, epochs),
                    min(240, report.left()), env)
    else:
        clean_dir, clean = uninterrupted, {"returncode": 0, "wall_s": None}
        report.say(f"  [{name}] uninterrupted: the seed run, the same command ({clean_dir})")
    seed_dir = os.path.join(args.out, "work", "seed")
    compare_env = {**env, "JAX_PLATFORMS": "cpu"}  # read back on the CPU, leave the device
    c = run(report, name, worker(args, "compare", "--workdirs", killed_dir, clean_dir, seed_dir),
            min(120, report.left()), compare_env)
    return {"epochs": epochs, "killed_during_epoch": kill_after + 1, "killed": killed,
            "checkpoints_when_killed": saved, "rerun_returncode": rerun["returncode"],
            "clean_returncode": clean["returncode"], "rerun_wall_s": rerun["wall_s"],
            "clean_wall_s": clean["wall_s"], "clean_dir": os.path.relpath(clean_dir, args.out),
            "comparison": (results(c["lines"]) or [None])[0],
            "env_xla_flags": env.get("XLA_FLAGS", "")}


def part_fid(report, args, env):
    workdir = os.path.join(args.out, "work", "seed")
    n = 256 if args.smoke else 10000
    r = run(report, "fid", [sys.executable, os.path.join(ROOT, "experiments", "evaluate.py"),
                            "--workdir", workdir, "--classifier", args.classifier,
                            "--num-samples", str(n), "--data-dir", args.data_dir,
                            "--accelerator", args.accelerator], min(180, report.left()), env)
    path = os.path.join(workdir, "eval.json")
    scores = None
    if os.path.exists(path):
        with open(path) as f:
            scores = json.load(f)
    return {"returncode": r["returncode"], "wall_s": r["wall_s"], "eval": scores}


def part_ensembles(report, args, env):
    """benchmarks/gan_step.py --num-seeds on the device: its rows (one per size and form)."""
    out = os.path.join(args.out, "work", "ensembles.json")
    batch, steps, warmup = (8, 1, 1) if args.smoke else (64, 20, 3)
    width = () if args.width == 1 else ("--width", str(args.width))
    r = run(report, "ensembles", [sys.executable, os.path.join(HERE, "gan_step.py"),
                                  "--num-seeds", ENSEMBLE_SIZES[args.smoke], "--batch-sizes",
                                  str(batch), "--steps", str(steps), "--warmup", str(warmup),
                                  *width, "--json", out], min(240, report.left()), env)
    measured = {"ensembles": [], "complete": False}
    if os.path.exists(out):  # rewritten after each row: a timed-out run keeps those it timed
        with open(out) as f:
            measured = json.load(f)
    return {"rows": measured["ensembles"], "complete": measured["complete"],
            "returncode": r["returncode"], "timed_out": r["timed_out"], "wall_s": r["wall_s"]}


def part_precision(report, args, env):
    r = run(report, "precision", worker(args, "precision"), min(150, report.left()), env)
    return {"rows": results(r["lines"]), "returncode": r["returncode"], "wall_s": r["wall_s"]}


def part_profile(report, args, env):
    workdir = os.path.join(args.out, "work", "profile")
    shutil.rmtree(workdir, ignore_errors=True)
    steps = (SMOKE_IMAGES if args.smoke else 60000) // 64
    r = run(report, "profile", gan_command(args, workdir, 2, "--profile-steps",
                                           f"{steps + 1}..{2 * steps}"),
            min(150, report.left()), env)
    traces = glob.glob(os.path.join(workdir, "tensorboard", "plugins", "profile", "*",
                                    "*.trace.json.gz"))
    out = {"returncode": r["returncode"], "wall_s": r["wall_s"], "traces": len(traces)}
    if traces:
        s = run(report, "profile", [sys.executable, os.path.join(HERE, "trace_summary.py"),
                                    traces[0], "--top", "40"], min(120, report.left()), env)
        out["summary"] = s["lines"]
        out["trace_mb"] = os.path.getsize(traces[0]) / 2**20
        with open(os.path.join(args.out, "work", "profile.summary.txt"), "w") as f:
            f.write("\n".join(s["lines"]) + "\n")
    return out


def pack_seed_run(report, args):
    workdir = os.path.join(args.out, "work", "seed")
    path = os.path.join(args.out, "seed_run.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        for pattern in SEED_RUN_FILES:
            for name in sorted(glob.glob(os.path.join(workdir, pattern))):
                tar.add(name, arcname=os.path.join("seed_run", os.path.basename(name)))
        profile = glob.glob(os.path.join(args.out, "work", "*.summary.txt"))
        for name in profile:
            tar.add(name, arcname=os.path.basename(name))
    report.say(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MB)")


def worker(args, name: str, *more) -> list:
    """The command of this script's worker ``name`` (a part's process), with the run's flags."""
    flags = ["--out", args.out, "--accelerator", args.accelerator, "--data-dir", args.data_dir,
             "--classifier", args.classifier, "--gans", ",".join(args.gans)]
    return [sys.executable, SCRIPT, "--worker", name, *more, *flags] + \
        (["--smoke"] if args.smoke else [])


def data_dir_error(data_dir: Optional[str]) -> Optional[str]:
    """The error line for a --data-dir without Fashion-MNIST's IDX files; None if it has them."""
    if data_dir is None:
        return ("error: --data-dir is missing; pass the directory of Fashion-MNIST's four IDX "
                ".gz files, or --smoke for synthetic data.")
    if not os.path.exists(os.path.join(data_dir, "train-images-idx3-ubyte.gz")):
        return (f"error: --data-dir {data_dir} holds no Fashion-MNIST IDX files "
                "(train-images-idx3-ubyte.gz, ...); pass the directory that holds them, or "
                "--smoke for synthetic data.")
    return None


def orchestrate(args) -> int:
    os.makedirs(os.path.join(args.out, "work"), exist_ok=True)
    if args.smoke and args.data_dir is None:
        args.data_dir = write_synthetic_idx(os.path.join(args.out, "work", "data"))
    error = data_dir_error(args.data_dir)
    if error:
        print(error, file=sys.stderr)
        return 2
    report = Report(args.out, args.budget)
    env = base_env(args)
    report.data.update({"smoke": args.smoke, "accelerator": args.accelerator,
                        "python": platform.python_version(), "parts_asked": args.parts})
    report.say(f"accelerator check: parts {', '.join(args.parts)}; budget {args.budget:.0f} s")
    # The least time each part needs to say anything (its compile, a run); skipped below that.
    needs = {"environment": 10, "seed_run": 60, "epochs": 60, "tests": 45, "resume": 45,
             "fid": 30, "precision": 30, "ensembles": 45, "variants": 45, "profile": 40,
             "deterministic": 60}
    epoch_s, seed_run = 1.0, None
    for part in args.parts:
        if report.left() < needs[part] * (0.2 if args.smoke else 1):
            report.say(f"-- {part}: skipped, {report.left():.0f} s left")
            report.part(part, {"skipped": f"{report.left():.0f} s left of the budget"})
            continue
        report.say(f"-- {part} ({report.left():.0f} s left)")
        try:
            if part == "environment":
                result = part_environment(report, args, env)
            elif part == "seed_run":
                result = part_seed_run(report, args, env)
                if result.get("per_epoch_time"):
                    epoch_s = min(result["per_epoch_time"])
                if result["finished"] and result["epochs"] == RESUME_EPOCHS[args.smoke]:
                    seed_run = result["workdir"]  # the resume check's uninterrupted run
            elif part == "epochs":
                result = part_epochs(report, args, env, "collection")
            elif part == "tests":
                result = part_tests(report, args, env)
            elif part == "resume":
                result = part_resume(report, args, env, epoch_s=epoch_s,
                                     uninterrupted=seed_run)
            elif part == "fid":
                result = part_fid(report, args, env)
            elif part == "precision":
                result = part_precision(report, args, env)
            elif part == "ensembles":
                result = part_ensembles(report, args, env)
            elif part == "variants":
                result = part_epochs(report, args, env, "variants")
            elif part == "profile":
                result = part_profile(report, args, env)
            elif part == "deterministic":
                first = report.data["parts"].get("resume", {}).get("comparison") or {}
                if first.get("final_state_identical") and first.get("losses_identical"):
                    result = {"skipped": "the first resume check was bit-identical"}
                else:
                    det_env = {**env, "XLA_FLAGS": (env.get("XLA_FLAGS", "") + " "
                                                    + DETERMINISTIC_FLAG).strip(),
                               "JAX_COMPILATION_CACHE_DIR": env["JAX_COMPILATION_CACHE_DIR"]
                               + "-deterministic"}
                    result = part_resume(report, args, det_env, "deterministic", epoch_s)
                    if report.left() > 40:
                        result["epoch"] = part_epochs(report, args, det_env, "GAN")
        except Exception as e:  # one part's failure must not lose the others
            result = {"error": f"{type(e).__name__}: {e}"}
            report.say(f"  [{part}] failed: {result['error']}")
        report.part(part, result)
    if os.path.isdir(os.path.join(args.out, "work", "seed")):
        pack_seed_run(report, args)
    report.say(summary(report.data))
    report.save()
    if not args.keep_work:
        shutil.rmtree(os.path.join(args.out, "work"), ignore_errors=True)
    return 0


def summary(data: dict) -> str:
    """The figures a reader wants first, as a short table."""
    parts = data["parts"]
    lines = ["", "== summary =="]
    env = parts.get("environment", {})
    lines.append(f"device: {env.get('devices')}; jax {env.get('jax')}, flax {env.get('flax')}, "
                 f"optax {env.get('optax')}, orbax {env.get('orbax_checkpoint')}")
    for part in ("epochs", "variants"):
        for row in parts.get(part, {}).get("rows", []):
            if "error" in row:
                lines.append(f"{row['label']:<34} error: {row['error'][:80]}")
                continue
            lines.append(f"{row['label']:<34} epoch {row['epoch_s']:7.3f} s  "
                         f"{row['steps_per_s']:8.0f} steps/s  compile {row['compile_s']:5.1f} s"
                         f"  peak {row['peak_bytes'] / 2**20:7.0f} MB  finite {row['finite']}")
    seed = parts.get("seed_run", {})
    if seed:
        lines.append(f"seed run: {seed.get('reference_line')}; command to finish "
                     f"{seed.get('wall_s', 0):.1f} s; finished {seed.get('finished')}")
    fid = (parts.get("fid") or {}).get("eval") or {}
    if fid:
        lines.append(f"seed run FID {fid.get('fid')}, Inception score "
                     f"{fid.get('inception_score')}, floor FID {fid.get('floor', {}).get('fid')}")
    for name in ("resume", "deterministic"):
        c = (parts.get(name) or {}).get("comparison")
        if c:
            lines.append(f"{name}: {json.dumps(c)}")
    tests = parts.get("tests", {})
    for k, v in tests.items():
        if isinstance(v, dict):
            lines.append(f"tests ({k}): {v.get('summary', [''])[-1:]}")
    for row in (parts.get("precision") or {}).get("rows", []):
        lines.append(f"precision {json.dumps(row)}")
    ensembles = (parts.get("ensembles") or {}).get("rows", [])
    solo = next((r["steps_per_s"] for r in ensembles if r["num_runs"] == 1), None)
    for row in ensembles:
        against = f", a step {solo / row['steps_per_s']:.2f}x one run's" if solo else ""
        form = "solo" if row["num_runs"] == 1 else row["runs_form"]
        lines.append(f"ensemble of {row['num_runs']:>2} ({form}): "
                     f"{row['steps_per_s']:.1f} steps/s, {row['run_steps_per_s']:.0f} runs x "
                     f"steps/s{against}")
    return "\n".join(lines)


# ================================================================================ the workers
def emit(row: dict) -> None:
    print("RESULT " + json.dumps(row), flush=True)


def worker_environment(args) -> None:
    import importlib.metadata as md

    import jax

    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tensorboardX",
                 "jax-cuda13-plugin", "jax-cuda12-plugin"):
        try:
            versions[name.replace("-", "_")] = md.version(name)
        except md.PackageNotFoundError:
            pass
    devices = jax.devices()
    emit({**versions, "devices": f"{len(devices)} x {devices[0].device_kind} "
                                 f"({devices[0].platform})",
          "default_backend": jax.default_backend(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()})


def _memory(device) -> dict:
    stats = device.memory_stats() or {}
    return {"peak_bytes": int(stats.get("peak_bytes_in_use", 0)),
            "bytes_limit": int(stats.get("bytes_limit", 0))}


def time_task_epoch(task, mesh, num_images: int, label: str) -> dict:
    """One whole epoch of ``task`` on ``num_images`` random images as the loop runs it (its
    default --steps-per-call), after one untimed epoch: compile, seconds, memory, finiteness."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, HERE)
    import gan_step

    from jaxgen.train import program
    from jaxgen.train.task import resolve_steps_per_call

    steps = num_images // task.config.batch_size
    per_call = resolve_steps_per_call(task.config, steps)
    with jax.set_mesh(mesh):
        state, data, perm = gan_step._start(task, steps, mesh)
        calls, compile_s, memory = {}, 0.0, {}
        for n in sorted({per_call, steps % per_call} - {0}):
            t = time.perf_counter()
            calls[n] = program.build_train_step(task, mesh, steps, n).lower(
                state, data, perm).compile()
            compile_s += time.perf_counter() - t
            analysis = calls[n].memory_analysis()
            if analysis is not None and n == per_call:
                memory = {"program_temp_bytes": int(analysis.temp_size_in_bytes),
                          "program_argument_bytes": int(analysis.argument_size_in_bytes)}

        def epoch(state):
            done, all_metrics = 0, []
            while done < steps:
                n = min(per_call, steps - done)
                state, metrics = calls[n](state, data, perm)
                all_metrics.append(metrics)
                done += n
            return state, all_metrics

        state, _ = epoch(state)  # warm-up
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        state, metrics = epoch(state)
        jax.block_until_ready((state, metrics))
        seconds = time.perf_counter() - t0
        finite = bool(all(np.isfinite(np.asarray(v)).all() for m in metrics
                          for v in jax.tree.leaves(m)))
        finite = finite and all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state.model)
                                if jnp.issubdtype(x.dtype, jnp.floating))
    device = mesh.devices.flat[0]
    return {"label": label, "device": f"{mesh.size} x {device.device_kind}",
            "batch_size": task.config.batch_size, "steps": steps, "steps_per_call": per_call,
            "epoch_s": seconds, "steps_per_s": steps / seconds, "compile_s": compile_s,
            "finite": finite, **memory, **_memory(device)}


def worker_epochs(args) -> None:
    import jax

    from jaxgen import parallel
    from jaxgen.train import gan_variants
    from jaxgen.train.vae import VAEConfig, VAETask

    mesh = parallel.make_mesh(parallel.select_devices(args.accelerator))
    images = SMOKE_IMAGES if args.smoke else 60000  # MNIST's size: 937 steps at batch 64

    def gan(name, **settings):
        cls = gan_variants.task_class(name)
        return lambda: cls(cls.config_class(**settings))

    plan = []
    if args.which in ("collection", "all"):
        plan += [(name, gan(name)) for name in args.gans]
        plan.append(("VAE (beta 1, mlp, batch 100)", lambda: VAETask(VAEConfig())))
    if args.which in ("variants", "all"):
        plan += [("GAN, canonical (CPU) conv forms", gan("GAN", conv_forms="canonical")),
                 ("GAN, xla conv forms", gan("GAN", conv_forms="xla")),
                 ("GAN, --precision highest", gan("GAN", precision="highest")),
                 ("GAN, --dtype bfloat16", gan("GAN", dtype="bfloat16")),
                 ("WGAN_GP, --dtype bfloat16", gan("WGAN_GP", dtype="bfloat16")),
                 ("DRAGAN, --dtype bfloat16", gan("DRAGAN", dtype="bfloat16")),
                 ("GAN, --steps-per-call 1", gan("GAN", steps_per_call=1))]
    if args.which == "GAN":
        plan = [("GAN" + (" (deterministic ops)" if "determin" in os.environ.get(
            "XLA_FLAGS", "") else ""), gan("GAN"))]
    for label, make in plan:
        try:
            row = time_task_epoch(make(), mesh, images, label)
        except Exception as e:  # the next model still gets its row
            row = {"label": label, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        emit(row)
        jax.clear_caches()


def worker_precision(args) -> None:
    """One vanilla GAN step on the device at each precision and in bfloat16, against the
    reference's step transcribed in float32 on the CPU (tests/test_gan_step.py)."""
    import dataclasses

    import jax
    import numpy as np

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from helpers import synthetic_images
    from test_gan_step import _reference_step

    from jaxgen import parallel
    from jaxgen.models.layers import resolve_conv_forms
    from jaxgen.train.gan import GANConfig, GANTask

    cpu = jax.devices("cpu")[0]
    device = parallel.select_devices(args.accelerator)[0]
    x = synthetic_images(64)[0][..., None].astype(np.float32) / 127.5 - 1.0
    key = jax.random.PRNGKey(3)
    base = GANTask(GANConfig(batch_size=64, precision="highest", conv_forms="xla"))
    with jax.default_device(cpu):
        model = jax.jit(base.init)(jax.random.PRNGKey(0))
        with jax.set_mesh(parallel.make_mesh([cpu])), jax.default_matmul_precision("highest"):
            ref = jax.jit(lambda m, x, k: _reference_step(base, m, x, k))(model, x, key)
    ref_losses = {"D_loss": float(ref[4]), "G_loss": float(ref[5])}
    ref = [np.asarray(a) for a in jax.tree.leaves(ref[0])] + \
          [np.asarray(a) for a in jax.tree.leaves(ref[2])]
    for precision, dtype in (("default", "float32"), ("high", "float32"),
                             ("highest", "float32"), ("default", "bfloat16")):
        config = dataclasses.replace(base.config, precision=precision, dtype=dtype,
                                     conv_forms="auto")
        task = GANTask(config)
        m = jax.device_put(model, device)
        with jax.set_mesh(parallel.make_mesh([device])):
            forms = resolve_conv_forms(config.conv_forms)  # as the step's trace resolves it
            step = jax.jit(task.train_step)
            if precision != "default":
                with jax.default_matmul_precision(precision):
                    new, metrics = step(m, jax.device_put(x, device), key)
            else:
                new, metrics = step(m, jax.device_put(x, device), key)
        got = [np.asarray(a) for a in jax.tree.leaves(new.g.params)] + \
              [np.asarray(a) for a in jax.tree.leaves(new.d.params)]
        old = [np.asarray(a) for a in jax.tree.leaves(model.g.params)] + \
              [np.asarray(a) for a in jax.tree.leaves(model.d.params)]
        # the update's error relative to the update's size (parameters move by about lr)
        num = sum(float(np.sum((g - r) ** 2)) for g, r in zip(got, ref))
        den = sum(float(np.sum((r - o) ** 2)) for r, o in zip(ref, old))
        emit({"precision": precision, "dtype": dtype, "conv_forms": forms,
              "update_rel_error": (num / den) ** 0.5,
              "D_loss_rel_error": abs(float(metrics["D_loss"]) - ref_losses["D_loss"])
              / abs(ref_losses["D_loss"]),
              "G_loss_rel_error": abs(float(metrics["G_loss"]) - ref_losses["G_loss"])
              / abs(ref_losses["G_loss"])})


def worker_compare(args) -> None:
    """Killed-and-resumed against uninterrupted (and against the seed run's first epochs): the
    per-step losses and the final train state, bit for bit."""
    import jax
    import numpy as np

    from jaxgen.runs.restore import restore_newest

    killed, clean, seed = args.workdirs

    def losses(workdir):
        with open(os.path.join(workdir, "GAN_history.json")) as f:
            history = json.load(f)
        return {k: np.asarray(history[k]) for k in ("D_loss", "G_loss")}

    def first_difference(a, b):
        n = min(len(a), len(b))
        diff = np.nonzero(a[:n] != b[:n])[0]
        return None if len(diff) == 0 else int(diff[0]) + 1

    a, b = losses(killed), losses(clean)
    out = {"losses_identical": all(np.array_equal(a[k], b[k]) for k in a),
           "first_differing_step": {k: first_difference(a[k], b[k]) for k in a},
           "max_abs_loss_difference": {k: float(np.max(np.abs(a[k] - b[k]))) for k in a}}
    ra, rb = restore_newest(killed), restore_newest(clean)
    la = [np.asarray(x) for x in jax.tree.leaves(ra.state)]
    lb = [np.asarray(x) for x in jax.tree.leaves(rb.state)]
    out["final_epoch"] = [ra.epoch, rb.epoch]
    out["final_state_identical"] = all(np.array_equal(x, y) for x, y in zip(la, lb))
    out["leaves_differing"] = sum(not np.array_equal(x, y) for x, y in zip(la, lb))
    if os.path.exists(os.path.join(seed, "GAN_history.json")) and \
            os.path.realpath(seed) != os.path.realpath(clean):  # (with --smoke, the same run)
        s = losses(seed)
        out["clean_vs_seed_run_first_differing_step"] = {
            k: first_difference(b[k], s[k][:len(b[k])]) for k in b}
    emit(out)


def write_synthetic_idx(directory: str, n_train: int = SMOKE_IMAGES, n_test: int = 256) -> str:
    """Random uint8 images and labels as the four Fashion-MNIST IDX files (for --smoke)."""
    import numpy as np

    os.makedirs(directory, exist_ok=True)
    rng = np.random.RandomState(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        arrays = {"images-idx3-ubyte": rng.randint(0, 256, (n, 28, 28)).astype(np.uint8),
                  "labels-idx1-ubyte": rng.randint(0, 10, n).astype(np.uint8)}
        for name, array in arrays.items():
            header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I",
                                                                   *array.shape)
            with gzip.open(os.path.join(directory, f"{split}-{name}.gz"), "wb") as f:
                f.write(header + array.tobytes())
    return directory


def add_device_flags(parser: argparse.ArgumentParser, scored: str) -> None:
    """--accelerator, --data-dir, --classifier and --smoke, as the device checks share them."""
    parser.add_argument("--accelerator", default="gpu", choices=("gpu", "tpu", "cpu"),
                        help="the platform to run on (%(default)s)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="Fashion-MNIST's four IDX .gz files (synthetic with --smoke)")
    parser.add_argument("--classifier", default=CLASSIFIER, metavar="DIR",
                        help=f"the classifier whose features score {scored} (the committed one)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes and synthetic data: a rehearsal on any machine")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="where accelerator.json, accelerator.log and seed_run.tar.gz go")
    add_device_flags(parser, "the seed run's FID")
    parser.add_argument("--budget", type=float, default=480, metavar="SECONDS",
                        help="the whole check's time; parts that no longer fit are skipped "
                             "(%(default)s)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma-separated parts to run, in order (%(default)s)")
    parser.add_argument("--gans", default=",".join(GANS),
                        help="the GANs of the epochs part (%(default)s)")
    parser.add_argument("--width", type=float, default=1.0, metavar="W",
                        help="the GAN's width in the gan_mnist.py runs and the ensembles "
                             "part (%(default)s: the reference's; narrower for a quicker "
                             "rehearsal)")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep DIR/work (workdirs and checkpoints of the runs)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--which", default="all", help=argparse.SUPPRESS)
    parser.add_argument("--workdirs", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out = os.path.abspath(args.out)
    args.gans = [g for g in args.gans.split(",") if g]
    args.parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in args.parts if p not in PARTS] + [g for g in args.gans if g not in GANS]
    if unknown:
        print(f"error: unknown part or GAN {', '.join(unknown)}; parts: {', '.join(PARTS)}; "
              f"GANs: {', '.join(GANS)}.", file=sys.stderr)
        return 2
    if args.worker:
        {"environment": worker_environment, "epochs": worker_epochs,
         "precision": worker_precision, "compare": worker_compare}[args.worker](args)
        return 0
    os.makedirs(args.out, exist_ok=True)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
