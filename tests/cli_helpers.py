"""Running the experiment scripts as a user does: as processes, or in-process for quick errors."""

import os
import runpy
import subprocess
import sys


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script(name: str) -> str:
    return os.path.join(REPO, "experiments", name)


def run_script(name: str, *args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script(name), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          cwd=REPO)


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
