"""Speed of the GAN train step: jaxgen against the PyTorch reference, in one run, side by side.

    python benchmarks/gan_step.py                                # batch 64 and 256
    python benchmarks/gan_step.py --batch-sizes 64 --json bench.json

For each batch size it times the step the training loop runs (``jaxgen.train.loop``: data
resident on the devices, the batch gathered and sharded inside the jitted step) after warm-up,
its compile time, the time from start to the end of step 100 (the reference's first log line)
and peak memory; then, when torch is installed, the reference's own code shape
(``benchmarks/torch_gan.py``) in a separate process, timed the same way. Compare figures only
within one run: the ratio is the result, machines differ.

    python benchmarks/gan_step.py --epoch             # one whole epoch on the default device

    python benchmarks/gan_step.py --num-seeds 1,2,4,8  # seed ensembles of those sizes

--num-seeds times, for each ensemble size N, the step of N runs in one vmapped program
(``jaxgen.train.ensemble``) at the first --batch-sizes: runs x steps per second, and the time
of one ensemble step against N solo steps (below 1: the ensemble is cheaper than N runs).

--width W times the GAN at W times the reference's channels (e.g. 0.25; the PyTorch rows are
the reference's, at width 1 only).

--epoch times one whole epoch instead (937 steps at batch 64, on random images, so no dataset
is needed) as the training loop runs it: --steps-per-call steps a call, by default auto (the
whole epoch in one program); it prints the device kind, the seconds
of the epoch and its compile time.
"""

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import parallel, runtime
from jaxgen.models.layers import CONV_FORMS
from jaxgen.train import gan_variants, program
from jaxgen.train.state import initial_state_on
from jaxgen.train.task import resolve_steps_per_call
from jaxgen.workdir import write_atomically

EPOCH_IMAGES = 60000  # the size of MNIST's training split: 937 steps at batch 64

HERE = os.path.dirname(os.path.abspath(__file__))


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = jax.devices()[0]
    return {"cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__,
            "device": f"{len(jax.devices())} x {device.device_kind} ({device.platform})"}


def peak_memory_bytes() -> int:
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the whole process


def _task(gan_type: str, width: float, **settings):
    """The ``gan_type`` GAN at ``width`` times the reference's channels, with ``settings``."""
    task_class = gan_variants.task_class(gan_type)
    return task_class(task_class.config_class(width=width, **settings))


def time_jaxgen(batch_size: int, steps: int, warmup: int, log_every: int, conv_forms: str,
                mesh, steps_per_call: int = 1, xla_defaults: bool = False,
                gan_type: str = "GAN", width: float = 1.0) -> dict:
    """Times ``warmup + steps`` steps of ``gan_type``; with ``steps_per_call`` K, each call runs
    K of them. ``xla_defaults`` compiles without ``jaxgen.parallel.compiler_options``."""
    start = time.perf_counter()
    task = _task(gan_type, width, batch_size=batch_size, conv_forms=conv_forms)
    steps_per_epoch = 16
    with jax.set_mesh(mesh):
        state, data, perm = _start(task, steps_per_epoch, mesh)
        step_fn = program.build_train_step(task, mesh, steps_per_epoch, steps_per_call,
                                        compiler_options={} if xla_defaults else None)
        t = time.perf_counter()
        step = step_fn.lower(state, data, perm).compile()
        compile_s = time.perf_counter() - t
        first_log, done = None, 0
        warmup_calls = -(-warmup // steps_per_call)
        for call in range(1, warmup_calls + steps // steps_per_call + 1):
            if call == warmup_calls + 1:
                jax.block_until_ready(state)
                t0 = time.perf_counter()
                faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            state, metrics = step(state, data, perm)
            done += steps_per_call
            if first_log is None and done >= log_every:
                jax.block_until_ready(metrics)
                first_log = time.perf_counter() - start
        jax.block_until_ready(state)
        seconds = time.perf_counter() - t0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    return {"framework": f"jaxgen {gan_type} (jax {jax.__version__})", "width": width,
            "form": f"{conv_forms} forms"
            + (f", {steps_per_call} steps/call" if steps_per_call > 1 else "")
            + (", XLA default options" if xla_defaults else ""),
            "batch_size": batch_size,
            "steps_per_s": steps / seconds, "images_per_s": steps * batch_size / seconds,
            "compile_s": compile_s, "first_log_s": first_log,
            "peak_memory_bytes": peak_memory_bytes(), "page_faults_per_step": faults / steps}


def _start(task, steps_per_epoch: int, mesh):
    """A fresh train state as the loop creates it (of ``config.num_seeds`` runs, an
    ensemble's), an epoch of random images (with labels for a conditional GAN) on the devices
    as the loop holds them, and the epoch's shuffle; inside ``jax.set_mesh(mesh)``."""
    num_runs = task.config.num_seeds
    state = initial_state_on(task, mesh)
    n = steps_per_epoch * task.config.batch_size
    images = np.random.RandomState(0).randint(0, 256, (n, 28, 28, 1), dtype=np.uint8)
    data = parallel.put_replicated(images, mesh)
    if task.needs_labels:
        labels = np.random.RandomState(1).randint(0, 10, n).astype(np.int32)
        data = (data, parallel.put_replicated(labels, mesh))
    perm = program.build_permutation(mesh, n, num_runs)(state.rng, jnp.int32(1))
    return state, data, perm


def time_ensemble(batch_size: int, num_runs: int, steps: int, warmup: int, mesh,
                  gan_type: str = "GAN", runs_form: str = "map", width: float = 1.0) -> dict:
    """Times ``steps`` steps of an ensemble of ``num_runs`` runs of ``gan_type`` (one step of
    every run a step) stepped in ``runs_form``, one step a call, after ``warmup`` untimed
    ones."""
    task = _task(gan_type, width, batch_size=batch_size, num_seeds=num_runs)
    steps_per_epoch = 16
    with jax.set_mesh(mesh):
        state, data, perm = _start(task, steps_per_epoch, mesh)
        t = time.perf_counter()
        step = program.build_train_step(task, mesh, steps_per_epoch, 1, num_runs=num_runs,
                                        runs_form=runs_form).lower(state, data, perm).compile()
        compile_s = time.perf_counter() - t
        for _ in range(warmup):
            state, metrics = step(state, data, perm)
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, data, perm)
        jax.block_until_ready((state, metrics))
        seconds = time.perf_counter() - t0
    return {"gan_type": gan_type, "width": width, "num_runs": num_runs, "runs_form": runs_form,
            "batch_size": batch_size,
            "steps_per_s": steps / seconds, "run_steps_per_s": num_runs * steps / seconds,
            "compile_s": compile_s, "peak_memory_bytes": peak_memory_bytes()}


def run_ensembles(args, batch_size: int, sizes: list[int]) -> None:
    mesh = parallel.make_mesh()
    parallel.check_batch_size(batch_size, mesh)
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores; jax {info['jax']} on "
          f"{info['device']}; {args.gan_type} at batch {batch_size}"
          + (f", width {args.width:g}" if args.width != 1 else ""))
    default = program.runs_form_for(mesh.devices.flat[0].platform)
    planned = [(n, form) for n in sizes
               for form in (program.RUNS_FORMS if n > 1 else ("map",))]
    rows, solo = [], None
    for n, form in planned:
        r = time_ensemble(batch_size, n, args.steps, args.warmup, mesh, args.gan_type, form,
                          args.width)
        solo = r["steps_per_s"] if n == 1 else solo
        # the time of one ensemble step over the time of N solo steps
        r["time_vs_solo_runs"] = round(solo / r["steps_per_s"] / n, 2) if solo else None
        rows.append(r)
        # written after each row: a run stopped early keeps what it measured
        _write_json(args.json, {"machine": info, "ensembles": rows,
                                "complete": len(rows) == len(planned)}, say=False)
    header = (f"{'runs':>5} {'form':>14} {'steps/s':>8} {'runs x steps/s':>15} "
              f"{'vs N solo':>10} {'compile s':>9} {'peak MB':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        against = "" if r["time_vs_solo_runs"] is None else f"{r['time_vs_solo_runs']:.2f}"
        form = "solo" if r["num_runs"] == 1 else r["runs_form"] + (
            " (default)" if r["runs_form"] == default else "")
        print(f"{r['num_runs']:>5} {form:>14} {r['steps_per_s']:>8.2f} "
              f"{r['run_steps_per_s']:>15.2f} {against:>10} {r['compile_s']:>9.1f} "
              f"{r['peak_memory_bytes'] / 2**20:>8.0f}")
    if args.json:
        print(f"wrote {args.json}")


def time_epoch(batch_size: int, mesh, steps_per_call=None, gan_type: str = "GAN",
               num_images: int = EPOCH_IMAGES, width: float = 1.0) -> dict:
    """Times one whole epoch of ``gan_type`` on ``num_images`` random images as the loop runs it,
    ``steps_per_call`` steps a call (None: auto, the whole epoch), after one untimed
    call."""
    task = _task(gan_type, width, batch_size=batch_size, steps_per_call=steps_per_call)
    steps_per_epoch = num_images // batch_size
    per_call = resolve_steps_per_call(task.config, steps_per_epoch)
    with jax.set_mesh(mesh):
        state, data, perm = _start(task, steps_per_epoch, mesh)
        calls = {}
        compile_s = 0.0
        for n in sorted({per_call, steps_per_epoch % per_call} - {0}):
            t = time.perf_counter()
            calls[n] = program.build_train_step(task, mesh, steps_per_epoch, n).lower(
                state, data, perm).compile()
            compile_s += time.perf_counter() - t
        state, _ = calls[per_call](state, data, perm)  # warm-up
        jax.block_until_ready(state)
        t0, done = time.perf_counter(), 0
        while done < steps_per_epoch:
            n = min(per_call, steps_per_epoch - done)
            state, metrics = calls[n](state, data, perm)
            done += n
        jax.block_until_ready((state, metrics))
        seconds = time.perf_counter() - t0
    device = mesh.devices.flat[0]
    return {"gan_type": gan_type, "width": width,
            "device": f"{mesh.size} x {device.device_kind} "
                                            f"({device.platform})",
            "batch_size": batch_size, "steps": steps_per_epoch, "steps_per_call": per_call,
            "epoch_s": seconds, "steps_per_s": steps_per_epoch / seconds,
            "compile_s": compile_s}


def time_torch(batch_size: int, steps: int, warmup: int, log_every: int,
               reuse_host_memory: bool) -> dict:
    """The PyTorch reference in its own process, with glibc's malloc defaults or with the
    settings of ``jaxgen.runtime.reuse_host_memory``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if reuse_host_memory:
        env.update(runtime.host_memory_environment())
    proc = subprocess.run([sys.executable, os.path.join(HERE, "torch_gan.py"), "--batch-size",
                           str(batch_size), "--steps", str(steps), "--warmup", str(warmup),
                           "--log-every", str(log_every)], capture_output=True, text=True,
                          env=env)
    if proc.returncode:
        raise RuntimeError(f"the PyTorch reference failed:\n{proc.stderr[-2000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["form"] = "reference" + (", malloc as jaxgen's" if reuse_host_memory else "")
    row["width"] = 1.0  # the reference's architecture
    return row


def time_jaxgen_with_malloc_defaults(batch_size: int, steps: int, warmup: int, log_every: int,
                                     conv_forms: str, steps_per_call: int,
                                     gan_type: str = "GAN", width: float = 1.0) -> dict:
    """``time_jaxgen`` in a fresh process that keeps glibc's malloc defaults (malloc's settings
    are process-wide and fixed once JAX has started)."""
    call = (f"import json, sys; sys.path.insert(0, {HERE!r}); import gan_step; "
            f"from jaxgen import parallel; "
            f"row = gan_step.time_jaxgen({batch_size}, {steps}, {warmup}, {log_every}, "
            f"{conv_forms!r}, parallel.make_mesh(), {steps_per_call}, gan_type={gan_type!r}, "
            f"width={width!r}); "
            f"print(json.dumps(row))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    proc = subprocess.run([sys.executable, "-c", call], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"the malloc-defaults run failed:\n{proc.stderr[-2000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["form"] += ", glibc malloc defaults"
    return row


def _write_json(path, report: dict, say: bool = True) -> None:
    """The report as JSON into ``path`` (--json), if one was given: whole or not at all."""
    if path:
        with write_atomically(path) as f:
            json.dump(report, f, indent=2)
        if say:
            print(f"wrote {path}")


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="64,256",
                        help="comma-separated global batch sizes (%(default)s)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps (%(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--log-every", type=int, default=100,
                        help="the step whose end is 'time to first log' (%(default)s)")
    parser.add_argument("--conv-forms", default="canonical",
                        help="convolution forms to time (jaxgen.models.layers.CONV_FORMS): "
                             "canonical, xla or both comma-separated (%(default)s)")
    parser.add_argument("--steps-per-call", type=int, default=None,
                        help="jaxgen train steps per compiled call (lax.scan); --steps must be "
                             "a multiple (default 1; with --epoch, auto)")
    parser.add_argument("--epoch", action="store_true",
                        help="time one whole epoch of the first --batch-sizes instead")
    parser.add_argument("--epoch-images", type=int, default=EPOCH_IMAGES,
                        help="random images of the --epoch (%(default)s)")
    parser.add_argument("--xla-defaults", action="store_true",
                        help="also time the first form compiled with XLA's default options, "
                             "without jaxgen.parallel.compiler_options")
    parser.add_argument("--malloc-defaults", action="store_true",
                        help="also time the first form with glibc's malloc defaults, without "
                             "jaxgen.runtime.reuse_host_memory (in a separate process)")
    parser.add_argument("--gan-type", default="GAN", choices=list(gan_variants.OBJECTIVES),
                        help="which GAN's step to time (%(default)s); the PyTorch reference "
                             "is GAN.py's, so other types have no PyTorch row")
    parser.add_argument("--width", type=float, default=1.0,
                        help="the networks' channels as a multiple of the reference's "
                             "(%(default)s: the reference's; the PyTorch reference only then)")
    parser.add_argument("--num-seeds", metavar="N,N,...",
                        help="time seed ensembles of these sizes (e.g. 1,2,4,8) instead")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()

    if not (math.isfinite(args.width) and args.width > 0):
        sys.exit("error: --width must be a positive number, e.g. 0.25.")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    forms = [f.strip() for f in args.conv_forms.split(",")]
    if not set(forms) <= set(CONV_FORMS):
        sys.exit(f"error: --conv-forms takes {' or '.join(CONV_FORMS)} or both, "
                 "comma-separated.")
    if args.num_seeds:
        try:
            sizes = [int(n) for n in args.num_seeds.split(",")]
        except ValueError:
            sizes = [0]
        if min(sizes) < 1:
            sys.exit("error: --num-seeds takes positive integers, comma-separated, e.g. 1,2,4.")
        runtime.reuse_host_memory()  # what jaxgen's scripts do first
        run_ensembles(args, batch_sizes[0], sizes)
        return
    if args.epoch:
        runtime.reuse_host_memory()  # what jaxgen's scripts do first
        run_epoch(args, batch_sizes[0])
        return
    args.steps_per_call = args.steps_per_call or 1
    if args.steps_per_call < 1 or args.steps % args.steps_per_call:
        sys.exit("error: --steps must be a positive multiple of --steps-per-call.")
    reused = runtime.reuse_host_memory()  # what jaxgen's scripts do first
    mesh = parallel.make_mesh()
    for b in batch_sizes:
        parallel.check_batch_size(b, mesh)
    with_torch = (not args.no_torch and args.gan_type == "GAN" and args.width == 1
                  and importlib.util.find_spec("torch") is not None)
    info = machine()
    info["reuse_host_memory"] = reused
    print(f"machine: {info['cpu']}, {info['cores']} cores; jax {info['jax']} on "
          f"{info['device']}; host memory reused between steps: {'yes' if reused else 'no'}"
          + (f"; width {args.width:g}" if args.width != 1 else ""))
    if args.no_torch:
        pass
    elif args.gan_type != "GAN" or args.width != 1:
        print("no PyTorch rows: the reference is GAN.py's vanilla GAN at width 1.")
    elif not with_torch:
        print("torch is not installed: no PyTorch column (pip install torch==2.13.0 on CPU).")

    rows, results = [], []
    for b in batch_sizes:
        # PyTorch with glibc's malloc defaults, and with jaxgen's settings when jaxgen has them:
        # jaxgen is compared with the faster of the two.
        torch_rows = [time_torch(b, args.steps, args.warmup, args.log_every, reuse)
                      for reuse in ((False, True) if reused else (False,))] if with_torch else []
        entry = {"batch_size": b}
        for form in forms:
            row = time_jaxgen(b, args.steps, args.warmup, args.log_every, form,
                              mesh, args.steps_per_call, gan_type=args.gan_type,
                              width=args.width)
            rows.append(row)
            key = "jaxgen" if form == forms[0] else f"jaxgen_{form}"
            entry[f"{key}_steps_per_s"] = row["steps_per_s"]
            entry[f"{key}_row"] = row
        if args.xla_defaults:
            row = time_jaxgen(b, args.steps, args.warmup, args.log_every,
                              forms[0], mesh, args.steps_per_call,
                              xla_defaults=True, gan_type=args.gan_type, width=args.width)
            rows.append(row)
            entry["jaxgen_xla_defaults_steps_per_s"] = row["steps_per_s"]
            entry["jaxgen_xla_defaults_row"] = row
        if args.malloc_defaults:
            row = time_jaxgen_with_malloc_defaults(b, args.steps, args.warmup, args.log_every,
                                                   forms[0], args.steps_per_call,
                                                   args.gan_type, args.width)
            rows.append(row)
            entry["jaxgen_malloc_defaults_steps_per_s"] = row["steps_per_s"]
            entry["jaxgen_malloc_defaults_row"] = row
        if torch_rows:
            rows.extend(torch_rows)
            best = max(torch_rows, key=lambda r: r["steps_per_s"])
            entry["torch_steps_per_s"] = best["steps_per_s"]
            entry["ratio"] = entry["jaxgen_steps_per_s"] / best["steps_per_s"]
            entry["torch_rows"] = torch_rows
        results.append(entry)

    header = (f"{'what':<64} {'batch':>5} {'steps/s':>8} {'images/s':>9} {'compile s':>9} "
              f"{'to 1st log s':>13} {'peak MB':>8} {'faults/step':>11}")
    print(header)
    print("-" * len(header))
    for r in rows:
        what = f"{r['framework']}, {r['form']}"
        print(f"{what:<64} {r['batch_size']:>5} {r['steps_per_s']:>8.2f} "
              f"{r['images_per_s']:>9.0f} {r['compile_s']:>9.1f} "
              f"{_fmt(r['first_log_s'], '13.1f'):>13} {r['peak_memory_bytes'] / 2**20:>8.0f} "
              f"{r['page_faults_per_step']:>11.0f}")
    for e in results:
        if "ratio" in e:
            print(f"batch {e['batch_size']}: jaxgen / PyTorch = {e['ratio']:.2f}x "
                  f"(against the faster PyTorch row)")
    _write_json(args.json, {"machine": info, "steps": args.steps, "results": results})


def run_epoch(args, batch_size: int) -> None:
    mesh = parallel.make_mesh()
    parallel.check_batch_size(batch_size, mesh)
    if args.steps_per_call is not None and args.steps_per_call < 1:
        sys.exit("error: --steps-per-call must be a positive integer.")
    if args.epoch_images < batch_size:
        sys.exit("error: --epoch-images must be at least the batch size.")
    info = machine()
    row = time_epoch(batch_size, mesh, args.steps_per_call, args.gan_type, args.epoch_images,
                     args.width)
    print(f"machine: {info['cpu']}, {info['cores']} cores; jax {info['jax']} on {row['device']}")
    width = f" at width {args.width:g}" if args.width != 1 else ""
    print(f"{row['gan_type']}{width}: one epoch of {row['steps']} steps at batch {batch_size}, "
          f"{row['steps_per_call']} steps a call: {row['epoch_s']:.2f} s "
          f"({row['steps_per_s']:.1f} steps/s; compile {row['compile_s']:.1f} s)")
    _write_json(args.json, {"machine": info, "epoch": row})


if __name__ == "__main__":
    main()
