"""benchmarks/gan_step.py end to end at a tiny size: its rows, its JSON and its comparisons."""

import json
import math
import os
import subprocess
import sys

from helpers import WIDTH, run_in_process, xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_writes_every_row_it_prints(tmp_path):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["XLA_FLAGS"] = xla_flags(1)  # one CPU device, as a user's machine
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gan_step.py"), "--batch-sizes", "8",
         "--steps", "2", "--warmup", "1", "--log-every", "2", "--malloc-defaults", "--width",
         str(WIDTH), "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"host memory reused between steps: yes; width {WIDTH:g}" in proc.stdout
    # the PyTorch reference is GAN.py's architecture: no rows of it for a narrower GAN
    assert "no PyTorch rows: the reference is GAN.py's vanilla GAN at width 1." in proc.stdout
    report = json.loads(out.read_text())
    assert report["machine"]["reuse_host_memory"] is True
    assert report["steps"] == 2  # the steps asked for
    (entry,) = report["results"]
    assert entry["batch_size"] == 8
    rows = [entry["jaxgen_row"], entry["jaxgen_malloc_defaults_row"]]
    assert [r["width"] for r in rows] == [WIDTH, WIDTH]
    assert [r["form"] for r in rows] == ["canonical forms",
                                         "canonical forms, glibc malloc defaults"]
    assert entry["jaxgen_steps_per_s"] == entry["jaxgen_row"]["steps_per_s"]
    assert "ratio" not in entry  # no PyTorch asked for

    # The printed table: a row for each configuration timed, and nothing else, each with the
    # batch size asked for and finite positive figures that are the JSON's.
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("what "))
    assert lines[header].split()[-2:] == ["MB", "faults/step"]
    assert set(lines[header + 1]) == {"-"}
    printed = [line for line in lines[header + 2:] if line != f"wrote {out}"]
    assert len(printed) == len(rows), printed
    for row, line in zip(rows, printed):
        what, figures = line[:64].rstrip(), line[64:].split()
        assert what == f"{row['framework']}, {row['form']}"
        batch, steps_per_s, images_per_s, compile_s, first_log_s, peak_mb, faults = figures
        assert int(batch) == 8
        for value in map(float, (steps_per_s, images_per_s, first_log_s, peak_mb)):
            assert math.isfinite(value) and value > 0, line
        for value in map(float, (compile_s, faults)):  # a cached compilation may print 0.0
            assert math.isfinite(value) and value >= 0, line
        assert steps_per_s == f"{row['steps_per_s']:.2f}"
        assert compile_s == f"{row['compile_s']:.1f}"
        assert peak_mb == f"{row['peak_memory_bytes'] / 2**20:.0f}"


def test_ensemble_benchmark_prints_each_size_in_each_form(tmp_path):
    """--num-seeds: a row for the solo run and for each larger ensemble in both forms, the CPU's
    form marked default, each as in the JSON; "vs N solo" relates them."""
    out = tmp_path / "ensembles.json"
    env = {**os.environ, "XLA_FLAGS": xla_flags(1)}  # one CPU device, as a user's machine
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gan_step.py"), "--num-seeds", "1,2",
         "--batch-sizes", "8", "--steps", "1", "--warmup", "1", "--width", str(WIDTH), "--json",
         str(out)],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["ensembles"]
    assert report["complete"]
    assert [(r["num_runs"], r["runs_form"]) for r in rows] == [(1, "map"), (2, "map"),
                                                               (2, "vmap")]
    assert {r["width"] for r in rows} == {WIDTH}
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("runs "))
    printed = [line.split() for line in lines[header + 2:header + 2 + len(rows)]]
    assert [line[:2] for line in printed] == [["1", "solo"], ["2", "map"], ["2", "vmap"]]
    assert printed[1][2] == "(default)"
    for row, line in zip(rows, printed):
        assert line[-5] == f"{row['steps_per_s']:.2f}"
        assert float(line[-3]) == round(rows[0]["steps_per_s"] / row["steps_per_s"]
                                        / row["num_runs"], 2)


def test_benchmark_refuses_bad_sizes_widths_and_steps_that_do_not_fill_calls(capsys):
    code, _, err = run_in_process("benchmarks/gan_step.py", "--num-seeds", "0,2", capsys=capsys)
    assert code != 0 and "--num-seeds takes positive integers" in err
    code, _, err = run_in_process("benchmarks/gan_step.py", "--steps", 5, "--steps-per-call", 2,
                                  "--no-torch", capsys=capsys)
    assert code != 0
    assert "--steps must be a positive multiple of --steps-per-call" in err
    for width in (0, "inf"):
        code, _, err = run_in_process("benchmarks/gan_step.py", "--width", width, capsys=capsys)
        assert code != 0 and "--width must be a positive number" in err, width


def test_benchmark_times_a_whole_epoch(tmp_path):
    """--epoch at a tiny size: every step of the epoch timed, in calls of the steps asked for
    (here 2 of 3: a call of 2 and one of 1), the device named."""
    out = tmp_path / "epoch.json"
    env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gan_step.py"), "--epoch",
         "--batch-sizes", "8", "--epoch-images", "24", "--steps-per-call", "2",
         "--width", str(WIDTH), "--json", str(out)], capture_output=True, text=True, env=env,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(out.read_text())["epoch"]
    assert (row["steps"], row["steps_per_call"], row["batch_size"]) == (3, 2, 8)
    assert row["device"].endswith("(cpu)") and row["epoch_s"] > 0
    assert row["width"] == WIDTH
    assert (f"GAN at width {WIDTH:g}: one epoch of 3 steps at batch 8, 2 steps a call: "
            f"{row['epoch_s']:.2f} s" in proc.stdout)
    assert row["device"] in proc.stdout


def test_accelerator_check_rehearses_on_cpu(tmp_path):
    """benchmarks/accelerator.py --smoke: the seed's run with its outputs, the kill -9 and
    resume check (bit-identical on CPU) and the seed ensembles' speed, in one command, as it
    runs on a device (on the tests' narrow GAN). The smoke's seed run is the resume check's
    uninterrupted run."""
    out = tmp_path / "check"
    env = {**os.environ, "XLA_FLAGS": xla_flags(1)}  # one CPU device, as the device has one GPU
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "accelerator.py"), "--out", str(out),
         "--smoke", "--accelerator", "cpu", "--parts", "environment,seed_run,resume,ensembles",
         "--budget", "500", "--width", str(WIDTH)], capture_output=True, text=True, env=env,
        timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "accelerator.json").read_text())
    parts = report["parts"]
    assert parts["environment"]["devices"] == "1 x cpu (cpu)"
    seed = parts["seed_run"]
    assert seed["finished"] and seed["reference_line"].startswith("Avg one epoch time: ")
    assert len(seed["per_epoch_time"]) == seed["epochs"] == 2
    resume = parts["resume"]
    assert resume["killed"] and resume["checkpoints_when_killed"] == [1]
    assert resume["clean_dir"] == os.path.join("work", "seed")
    comparison = resume["comparison"]
    assert comparison["losses_identical"] and comparison["final_state_identical"], comparison
    assert "clean_vs_seed_run_first_differing_step" not in comparison  # the same run here
    assert parts["ensembles"]["complete"]
    ensembles = parts["ensembles"]["rows"]  # the seed ensembles' curve, at the smoke's sizes
    assert [(r["num_runs"], r["runs_form"], r["width"]) for r in ensembles] == [
        (1, "map", WIDTH), (2, "map", WIDTH), (2, "vmap", WIDTH)]
    import tarfile
    with tarfile.open(out / "seed_run.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"seed_run/GAN_epoch001.png", "seed_run/GAN_epoch002.png", "seed_run/GAN_loss.png",
            "seed_run/GAN_generate_animation.gif", "seed_run/run.log"} <= names
    log = (out / "accelerator.log").read_text()
    assert log.count("Training finish") == 2  # the seed run and the resumed run
    assert f"--width {WIDTH}" in log
    assert not (out / "work").exists()  # the runs' checkpoints are not left behind


def test_accelerator_check_refuses_a_data_dir_without_the_files(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "accelerator.py"), "--out",
         str(tmp_path / "check"), "--data-dir", str(tmp_path)], capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: --data-dir {tmp_path} holds no Fashion-MNIST IDX")


def test_seed_scale_archives_every_run_but_its_checkpoints(tmp_path):
    """benchmarks/seed_scale.py brings a device's runs back in one archive: every file of every
    run (grids, scores, histories, TensorBoard) but the checkpoints, the compilation cache and
    the lock files."""
    import tarfile

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import seed_scale
    finally:
        sys.path.remove(os.path.join(ROOT, "benchmarks"))
    work = tmp_path / "work"
    files = ["collection/gan/eval.json", "collection/gan/GAN_epoch001.png",
             "collection/gan/tensorboard/run0/events", "collection/collection.md",
             "vae/beta_1/test_eval.json", "vae/ablation.md"]
    left_out = ["collection/gan/checkpoints/1/state", "collection/gan/.lock",
                "vae/beta_1/checkpoints/2/state", "xla-cache/entry", "data/train.gz"]
    for name in files + left_out:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(name)
    archived = seed_scale.archive(str(work), str(tmp_path / "part.tar.gz"))
    assert archived == ["collection", "vae"]
    with tarfile.open(tmp_path / "part.tar.gz") as tar:
        kept = {m.name for m in tar.getmembers() if m.isfile()}
        assert tar.extractfile("vae/ablation.md").read() == b"vae/ablation.md"
    assert kept == set(files)
