"""Running the experiment scripts as a user does: as processes, or in-process for quick errors.

Script runs that tests only read the outputs of (a training run, the KL ablation, the
two-process run) are *background runs*: a function ``job(directory)`` decorated with
``background_run`` becomes a session-scoped fixture of the same name whose value is what the
job returned. conftest.py starts every background run that a collected test uses when the
session starts, one after another in a worker thread, and runs the tests that read them last:
the scripts, mostly single-threaded XLA compilation, run on the core that the in-process tests
leave idle (at a lower priority, so that they do not slow those tests down).
"""

import concurrent.futures
import os
import runpy
import subprocess
import sys
import tempfile
import threading

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The environment conftest.py set up, as it was before any test ran: background runs start
# from a worker thread while tests may change os.environ (monkeypatch.setenv).
BASE_ENV = dict(os.environ)
# Background runs yield the CPU to the tests that run meanwhile, which the session waits for.
BACKGROUND_NICENESS = 10


def script(name: str) -> str:
    return os.path.join(REPO, "experiments", name)


def _command(name: str, args) -> list:
    return [sys.executable, script(name), *map(str, args)]


def run_script(name: str, *args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(_command(name, args), capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO)


class ScriptProcess:
    """A script started as a process, its output going to files (no pipe to fill up); from a
    background run: its environment is BASE_ENV updated with ``env``."""

    def __init__(self, name: str, *args, env=None):
        self._out = tempfile.TemporaryFile("w+")
        self._err = tempfile.TemporaryFile("w+")
        self.args = _command(name, args)
        with _lock:
            if _stopped:
                raise RuntimeError("the test session is over")
            self.proc = subprocess.Popen(self.args, stdout=self._out, stderr=self._err,
                                         text=True, env={**BASE_ENV, **(env or {})}, cwd=REPO)
            _processes.append(self.proc)
        try:  # before it starts its threads, which inherit it
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, BACKGROUND_NICENESS)
        except (AttributeError, OSError):  # no setpriority here, or the process has ended
            pass

    def wait(self, timeout=600) -> subprocess.CompletedProcess:
        self.proc.wait(timeout)
        outputs = []
        for f in (self._out, self._err):
            f.seek(0)
            outputs.append(f.read())
            f.close()
        return subprocess.CompletedProcess(self.args, self.proc.returncode, *outputs)


def run_in_background(name: str, *args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """``run_script`` for background runs."""
    return ScriptProcess(name, *args, env=env).wait(timeout)


def run_in_process(name: str, *args, capsys) -> tuple[int, str, str]:
    """Runs a script's ``__main__`` here (no interpreter start-up): (exit code, stdout, stderr)."""
    argv = sys.argv
    sys.argv = [script(name), *map(str, args)]
    try:
        runpy.run_path(script(name), run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------- background runs

JOBS = {}  # fixture name -> job(directory)
_futures = {}  # fixture name -> Future of the job's result
_processes = []  # every ScriptProcess's Popen, to stop at the end of the session
_lock = threading.Lock()
_worker = None
_stopped = False


def background_run(job):
    """Makes ``job(directory: pathlib.Path)`` a background run: a session-scoped fixture named
    as the job, whose value is the job's return value (an exception the job raised is raised
    by the fixture). The job runs in a worker thread: it may only start processes
    (``run_in_background``) and write files, not call JAX."""
    JOBS[job.__name__] = job

    @pytest.fixture(scope="session", name=job.__name__)
    def fixture(tmp_path_factory):
        return start(job.__name__, tmp_path_factory).result()

    return fixture


def start(name: str, tmp_path_factory) -> concurrent.futures.Future:
    """Queues background run ``name`` (once) in the worker thread; its Future."""
    global _worker
    if name not in _futures:
        if _worker is None:
            _worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="scripts")
        _futures[name] = _worker.submit(JOBS[name], tmp_path_factory.mktemp(name))
    return _futures[name]


def stop_background_runs() -> None:
    """Drops the queued background runs and ends the processes still running."""
    global _stopped
    if _worker is not None:
        _worker.shutdown(wait=False, cancel_futures=True)
    with _lock:
        _stopped = True
        for proc in _processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
