"""benchmarks/gan_step.py end to end at a tiny size: its rows, its JSON and its comparisons."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_writes_every_row_it_prints(tmp_path):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["XLA_FLAGS"] = ""  # one CPU device, as a user's machine
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gan_step.py"), "--batch-sizes", "8",
         "--steps", "2", "--warmup", "1", "--log-every", "2", "--no-torch", "--malloc-defaults", "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "host memory reused between steps: yes" in proc.stdout
    report = json.loads(out.read_text())
    assert report["machine"]["reuse_host_memory"] is True
    (entry,) = report["results"]
    assert entry["batch_size"] == 8
    rows = [entry["jaxgen_row"], entry["jaxgen_malloc_defaults_row"]]
    assert [r["form"] for r in rows] == ["sub-pixel", "sub-pixel, glibc malloc defaults"]
    for row in rows:
        assert row["steps_per_s"] > 0 and row["page_faults_per_step"] >= 0
        assert row["images_per_s"] == row["steps_per_s"] * 8
        assert row["form"] in proc.stdout
    assert entry["jaxgen_steps_per_s"] == entry["jaxgen_row"]["steps_per_s"]
    assert "ratio" not in entry  # no PyTorch asked for


def test_benchmark_refuses_steps_that_do_not_fill_whole_calls():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gan_step.py"), "--steps", "5",
         "--steps-per-call", "2", "--no-torch"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "--steps must be a positive multiple of --steps-per-call" in proc.stderr
