"""What a run promises when things go wrong: one run per workdir, a full disk, a kill at the very
end, a corrupt newest checkpoint, and bad input refused before anything is created."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import WIDTH, failing_writes, free_port, run_in_process

from jaxgen import data, parallel, rendezvous
from jaxgen.checkpoint import Checkpoints
from jaxgen.errors import JaxgenError
from jaxgen.runs.restore import restore_newest
from jaxgen.train import checks, loop
from jaxgen.train.task import Picture, Task, TrainConfig
from jaxgen.workdir import WorkdirLock, checkpoint_dir


class _Counter(Task):
    """The cheapest task: counts its steps, draws constant images (so it restores and samples)."""

    name = "PROBE_COUNTER"
    config_class = TrainConfig
    metric_names = ("count",)

    def __init__(self, config):
        self.config = config

    def init(self, key):
        return {"count": jnp.zeros((), jnp.float32)}

    def train_step(self, model, images, key):
        count = model["count"] + 1
        return {"count": count}, {"count": count}

    def pictures(self, model, rng):
        return {"": Picture(jnp.zeros((4, 28, 28, 1)) + model["count"] / 100)}


def _train(workdir, images, epochs=2, log=None):
    config = TrainConfig(epochs=epochs, batch_size=16, log_every=1)
    return loop.train(_Counter(config), images, str(workdir),
                      parallel.make_mesh(jax.devices()[:1]), log=log or (lambda _: None))


def test_a_task_that_writes_its_own_pictures_is_told_what_replaced_it(tiny_images, tmp_path):
    class Old(_Counter):
        def epoch_end(self, state, epoch, workdir):
            pass

    with pytest.raises(JaxgenError, match="defines epoch_end/train_end, which the loop no longer "
                                          "calls: return its pictures from pictures"):
        loop.train(Old(TrainConfig(epochs=1, batch_size=16)), tiny_images, str(tmp_path / "w"),
                   parallel.make_mesh(jax.devices()[:1]))
    assert not (tmp_path / "w").exists()


def test_images_of_another_dataset_than_the_config_names_are_refused(tiny_images, tmp_path):
    fashion = data.Dataset("fashion_mnist", "train", tiny_images,
                           np.zeros(len(tiny_images), np.int32), data.dataset_info(
                               "fashion_mnist").class_names)
    with pytest.raises(JaxgenError, match="the images are fashion_mnist's train split, but the "
                                          "task's config says dataset='mnist'"):
        loop.train(_Counter(TrainConfig(epochs=1, batch_size=16)), fashion, str(tmp_path / "w"),
                   parallel.make_mesh(jax.devices()[:1]))
    assert not (tmp_path / "w").exists()
    state, _ = loop.train(_Counter(TrainConfig(dataset="fashion_mnist", epochs=1, batch_size=16)),
                          fashion, str(tmp_path / "w"), parallel.make_mesh(jax.devices()[:1]),
                          log=lambda _: None)
    assert float(state.model["count"]) == len(tiny_images) // 16


# ----------------------------------------------------------------------------- the lock

def test_a_second_run_on_a_workdir_is_refused_until_the_first_dies(tiny_images, tmp_path):
    workdir = tmp_path / "run"
    _train(workdir, tiny_images, epochs=1)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from jaxgen.workdir import WorkdirLock\n"
         f"with WorkdirLock({str(workdir)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(JaxgenError, match=f"in use by a run of host .*PID {holder.pid}"):
            _train(workdir, tiny_images, epochs=2)
        assert Checkpoints(checkpoint_dir(str(workdir)), read_only=True).epochs() == [1]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # killed with SIGKILL, the holder leaves no stale lock: the next run starts at once
    state, history = _train(workdir, tiny_images, epochs=2)
    assert len(history.per_epoch_time) == 2


def test_the_lock_is_released_when_training_fails(tiny_images, tmp_path):
    with pytest.raises(JaxgenError):
        loop.train(_Counter(TrainConfig(epochs=1, batch_size=1000)), tiny_images,
                   str(tmp_path / "run"), parallel.make_mesh(jax.devices()[:1]))
    with WorkdirLock(str(tmp_path)):  # nothing is held by the failed run
        pass


# ----------------------------------------------------------------------------- disk full

def test_a_full_disk_is_one_error_and_keeps_the_earlier_checkpoints(tiny_images, tmp_path,
                                                                     monkeypatch):
    workdir = tmp_path / "run"
    _train(workdir, tiny_images, epochs=1)
    real_save = Checkpoints.save

    def save_then_fill(self, epoch, state, meta):
        real_save(self, epoch, state, meta)  # the writer starts, then the disk fills up
        self.wait()
        os.makedirs(os.path.join(self.directory, f"{epoch}.orbax-checkpoint-tmp-123"))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Checkpoints, "save", save_then_fill)
    with pytest.raises(JaxgenError, match=r"no space left .* epoch 2 \(about \d+ MB needed\)"):
        _train(workdir, tiny_images, epochs=2)
    assert sorted(os.listdir(checkpoint_dir(str(workdir)))) == ["1"]  # partial save removed
    monkeypatch.setattr(Checkpoints, "save", real_save)
    state, _ = _train(workdir, tiny_images, epochs=2)  # and the run resumes from epoch 1
    assert float(state.model["count"]) == 8


def test_orbax_reports_of_a_full_disk_go_to_a_debug_log_not_the_terminal(
        tiny_images, tmp_path, monkeypatch, caplog):
    """What orbax's threads report while a save fails for want of space (absl's errors with
    their tracebacks, asyncio's, the abandoned writes' "Event loop is closed"), during the save
    and after it, goes to WORKDIR/jaxgen-debug.log, named in the one error line; a save that
    fails otherwise shows them, and the next save's are shown again."""
    import logging
    import sys
    import threading
    import types

    from jaxgen import checkpoint_reports

    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after the test
    checkpoint_reports.drop_abandoned_reads()  # as jaxgen's scripts install it
    monkeypatch.setattr(checkpoint_reports, "_failed_saves", False)
    workdir = tmp_path / "run"
    _train(workdir, tiny_images, epochs=1)
    real_save = Checkpoints.save

    def report(message):
        logging.getLogger("absl").error(message, exc_info=OSError(errno.ENOSPC, "full"))
        logging.getLogger("asyncio").error(f"{message} (asyncio)")
        loop_closed = RuntimeError("Event loop is closed")
        sys.unraisablehook(types.SimpleNamespace(exc_type=RuntimeError, exc_value=loop_closed,
                                                 exc_traceback=None, err_msg=None, object=None))

    def save_then_fail(error):
        def save(self, epoch, state, meta):
            real_save(self, epoch, state, meta)
            self.wait()
            thread = threading.Thread(target=report, args=("a writer thread failed",))
            thread.start()
            thread.join()
            raise error
        return save

    monkeypatch.setattr(Checkpoints, "save", save_then_fail(OSError(errno.ENOSPC, "full")))
    with caplog.at_level("WARNING"):
        with pytest.raises(JaxgenError, match=r"Orbax's reports of the failure: "
                                              + re.escape(str(workdir / "jaxgen-debug.log"))):
            _train(workdir, tiny_images, epochs=2)
        report("a late report of an abandoned write")
    assert not caplog.records
    log = (workdir / "jaxgen-debug.log").read_text()
    for message in ("a writer thread failed", "a writer thread failed (asyncio)",
                    "a late report of an abandoned write"):
        assert message in log
    assert "OSError: [Errno 28] full" in log  # with its traceback

    monkeypatch.setattr(Checkpoints, "save", save_then_fail(ValueError("another failure")))
    with caplog.at_level("WARNING"), pytest.raises(ValueError, match="another failure"):
        _train(workdir, tiny_images, epochs=2)
    assert [r.getMessage() for r in caplog.records] == ["a writer thread failed",
                                                        "a writer thread failed (asyncio)"]


# ----------------------------------------------------------------------------- kill at the end

def test_a_rerun_rebuilds_the_end_of_run_outputs(tiny_images, tmp_path):
    workdir = tmp_path / "run"
    _train(workdir, tiny_images, epochs=2)
    gif = workdir / "PROBE_COUNTER_generate_animation.gif"
    history_file = workdir / "PROBE_COUNTER_history.json"
    os.remove(gif)  # as if killed after the last checkpoint, before the end-of-run outputs
    history_file.write_text(json.dumps({"count": [1.0], "per_epoch_time": [0.1]}))  # stale
    logs = []
    _train(workdir, tiny_images, epochs=2, log=logs.append)
    assert any("nothing to train" in line for line in logs)
    assert gif.exists()
    assert json.loads(history_file.read_text())["count"] == [1, 2, 3, 4, 5, 6, 7, 8]


# ----------------------------------------------------------------------------- corrupt meta

def _write_meta(workdir, epoch, meta):
    path = os.path.join(checkpoint_dir(str(workdir)), str(epoch), "meta", "metadata")
    with open(path, "w") as f:
        json.dump(meta, f)


@pytest.mark.parametrize("meta", [{}, {"task": "PROBE_COUNTER"}])
def test_metadata_without_its_fields_is_a_corrupt_checkpoint(meta, tiny_images, tmp_path):
    workdir = tmp_path / "run"
    _train(workdir, tiny_images, epochs=2)
    _write_meta(workdir, 2, meta)
    logs = []
    state, history = _train(workdir, tiny_images, epochs=2, log=logs.append)
    assert any("checkpoint of epoch 2 cannot be read (its metadata lacks" in line
               for line in logs)
    assert any("Resuming from the checkpoint of epoch 1" in line for line in logs)
    assert float(state.model["count"]) == 8  # epoch 2 trained again


def test_a_restore_reports_the_epoch_it_actually_restored(tiny_images, tmp_path):
    from jaxgen.runs import registry

    workdir = tmp_path / "run"
    _train(workdir, tiny_images, epochs=2)
    _write_meta(workdir, 2, {})
    registry.register_task(_Counter)
    try:
        restored = restore_newest(str(workdir), devices=jax.devices()[:1])
    finally:
        registry.unregister_task(_Counter.name)
    assert restored.epoch == 1 and float(restored.state.model["count"]) == 4


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("args,message", [
    (("--seed", 2 ** 64), "--seed must be an integer in 0..4294967295, got 18446744073709551616"),
    (("--lr-d", "inf"), "--lr-d must be finite and positive, got inf"),
    (("--lr-g", "nan"), "--lr-g must be finite and positive, got nan"),
    (("--workdir", ""), "--workdir is empty"),
    (("--coordinator-address", "notahost", "--num-processes", 2, "--process-id", 0),
     "--coordinator-address must be HOST:PORT"),
])
def test_bad_training_input_is_one_line_and_creates_nothing(args, message, tmp_path, capsys,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_in_process("gan_mnist.py", *args, capsys=capsys)
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: ") and message in lines[-1], err
    assert os.listdir(tmp_path) == []  # nothing created, in the working directory either


def test_sample_out_naming_a_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "grid.png"
    out.mkdir()
    code, _, err = run_in_process("sample.py", "--workdir", tmp_path, "--out", out, capsys=capsys)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(f"error: --out {out} is a directory")


def test_a_real_divergence_stops_training(tiny_images, tmp_path):
    """Not an injected NaN: a learning rate so large that a VAE's loss overflows."""
    from jaxgen.train.vae import VAEConfig, VAETask

    config = VAEConfig(epochs=3, batch_size=16, log_every=1, latent_dim=2, hidden=(8,), lr=1e30)
    with pytest.raises(JaxgenError, match="became (nan|inf|-inf)|non-finite"):
        loop.train(VAETask(config), tiny_images, str(tmp_path / "run"),
                   parallel.make_mesh(jax.devices()[:1]), log=lambda _: None)
    # stopped at the first non-finite value: no checkpoint holds a non-finite parameter
    assert Checkpoints(checkpoint_dir(str(tmp_path / "run")), read_only=True).epochs() == []


def test_the_parameter_check_sees_every_float_kind_and_only_floats():
    """The end-of-epoch check of the model: a NaN or an infinity in any floating leaf, bfloat16
    included, is caught; integer leaves (step counts) are not floats and are skipped. A seed
    ensemble's check finds the run that holds it."""
    fine = {"w": jnp.ones((2, 3)), "count": jnp.arange(3), "half": jnp.ones(2, jnp.bfloat16)}
    assert checks.finite_runs(fine, 1).all()
    for name, bad in (("w", jnp.array([1.0, jnp.nan])),
                      ("half", jnp.array([jnp.inf], jnp.bfloat16))):
        assert not checks.finite_runs({**fine, name: bad}, 1).all(), name
    runs = {"w": jnp.ones((3, 2, 2)).at[1, 0, 1].set(jnp.inf), "count": jnp.arange(3),
            "half": jnp.ones(3, jnp.bfloat16).at[2].set(jnp.nan)}
    assert checks.finite_runs(runs, 3).tolist() == [True, False, False]


# ----------------------------------------------------------------------------- a missing host

@pytest.mark.parametrize("process_id,message", [
    (0, "processes 1, 2 of --num-processes 3 did not join the run at 127.0.0.1:{port} within "
        "2 s (--distributed-timeout)"),
    (2, "process 2 could not reach process 0 at --coordinator-address 127.0.0.1:{port} within "
        "2 s"),
])
def test_a_host_that_never_joins_is_one_line(process_id, message, tmp_path, capsys):
    port = free_port()
    start = time.monotonic()
    code, _, err = run_in_process(
        "gan_mnist.py", "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", 3,
        "--process-id", process_id, "--distributed-timeout", 2, "--workdir", tmp_path / "w",
        capsys=capsys)
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: "), err
    assert message.format(port=port) in lines[-1]
    assert time.monotonic() - start < 30
    assert not (tmp_path / "w").exists()


def _roll_call_threads(port, processes):
    """roll_call of (process id, process count) each in a thread: what each raised, or None."""
    outcomes = {}

    def call(pid, count):
        try:
            rendezvous.roll_call(f"127.0.0.1:{port}", count, pid, timeout=10)
            outcomes[pid] = None
        except JaxgenError as e:
            outcomes[pid] = str(e)

    threads = [threading.Thread(target=call, args=p) for p in processes]
    threads[0].start()
    time.sleep(0.3)  # process 0 listens first; the others' retries are tested above
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(30)
    return outcomes


def test_the_roll_call_returns_once_every_process_came():
    assert _roll_call_threads(free_port(), [(0, 3), (2, 3), (1, 3)]) == {0: None, 1: None,
                                                                        2: None}


def test_a_process_started_with_another_count_stops_every_process():
    outcomes = _roll_call_threads(free_port(), [(0, 2), (1, 3)])
    expected = ("process 1 was started with --num-processes 3, process 0 with 2; start every "
                "process with the same --num-processes.")
    assert outcomes[0] == expected and outcomes[1] == expected


def test_two_processes_with_one_id_stop_the_run():
    outcomes = _roll_call_threads(free_port(), [(0, 3), (1, 3), (1, 3)])
    assert outcomes[0].startswith("two processes were started with --process-id 1")
    assert outcomes[1] is not None and "--process-id 1" in outcomes[1]


@pytest.mark.parametrize("sig,status,line", [
    (signal.SIGTERM, 143, "terminated (SIGTERM); rerun the same command to resume from the last "
                          "checkpoint."),
    (signal.SIGINT, 130, "interrupted; rerun the same command to resume from the last "
                         "checkpoint.")])
def test_a_stop_signal_is_one_line_that_says_how_to_resume(sig, status, line, idx_dir, tmp_path):
    """A scheduler's SIGTERM, or Ctrl-C, just after a checkpoint (orbax still finishing it):
    that one line on standard error, nothing else (no thread's traceback), the exit status,
    the checkpoints written so far kept."""
    from helpers import ScriptProcess

    workdir = tmp_path / "run"
    proc = ScriptProcess("gan_mnist.py", "--data-dir", idx_dir, "--workdir", workdir,
                         "--epochs", 1000, "--batch-size", 16, "--log-every", 4,
                         "--width", WIDTH)
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "1").is_dir() and proc.proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.1)
    proc.proc.send_signal(sig)
    result = proc.wait(timeout=120)
    assert result.returncode == status, result.stderr[-2000:]
    assert [text for text in result.stderr.splitlines() if text.strip()] == [line]
    assert restore_newest(str(workdir), devices=jax.devices()[:1]).epoch >= 1


# A script of the smallest kind: one jitted program, run through the scripts' start-up.
CACHED_PROGRAM = """
import jax, jax.numpy as jnp
from jaxgen import cli

def main():
    print(float(jax.jit(lambda x: jnp.tanh(x).sum(), donate_argnums=())(jnp.ones(3))))

cli.run(main)
"""


def test_an_unreadable_compilation_cache_entry_is_replaced(tmp_path):
    """A corrupt entry of the persistent compilation cache: one warning line, the program
    compiled again and its entry written anew, so the next run reads it without a word."""
    cache = tmp_path / "cache"
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache),
           "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}

    def run():
        proc = subprocess.run([sys.executable, "-c", CACHED_PROGRAM], capture_output=True,
                              text=True, env=env, timeout=300)
        assert proc.returncode == 0 and float(proc.stdout) == pytest.approx(3 * np.tanh(1.0))
        return [line for line in proc.stderr.splitlines() if line.strip()]

    assert run() == []
    entries = sorted(cache.glob("jit__lambda-*-cache"))
    assert entries
    for entry in entries:
        entry.write_bytes(b"not a compiled program")
    lines = run()
    assert len(lines) == 1 and lines[0].startswith(
        f"warning: the compilation cache {cache} held an unreadable copy of jit__lambda; it "
        "was removed and the program was compiled again."), lines
    assert all(e.read_bytes() != b"not a compiled program" for e in cache.glob("jit__lambda-*"))
    assert sorted(cache.glob("jit__lambda-*-cache")) == entries  # written anew
    assert run() == []


# ----------------------------------------------------------------------------- writing outputs

@pytest.mark.parametrize("error_number,reason", [
    (errno.ENOSPC, "no space left on the device"), (errno.EROFS, "the filesystem is read-only"),
    (errno.EACCES, "permission denied")])
def test_a_failed_write_is_one_error_and_keeps_the_previous_file(error_number, reason, tmp_path,
                                                                 monkeypatch):
    from jaxgen.workdir import write_atomically

    path = tmp_path / "eval.json"
    path.write_text('{"fid": 1.0}')
    failing_writes(monkeypatch, error_number)
    with pytest.raises(JaxgenError) as caught:
        with write_atomically(str(path)) as f:
            f.write('{"fid": 2.0, "and": "more"}')
    assert str(caught.value).startswith(f"cannot write {path}: {reason}; the previous file, if "
                                        "any, is intact.")
    assert path.read_text() == '{"fid": 1.0}'
    assert os.listdir(tmp_path) == ["eval.json"]  # no temporary file, no 0-byte file


def test_a_reader_never_sees_a_partial_file(tmp_path):
    from jaxgen.workdir import write_atomically

    path = tmp_path / "metrics.jsonl"
    path.write_text("old\n")
    with write_atomically(str(path)) as f:
        f.write("new, first half\n")
        assert path.read_text() == "old\n"  # until the block ends, the old file is the file
        f.write("second half\n")
    assert path.read_text() == "new, first half\nsecond half\n"
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
