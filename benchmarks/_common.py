"""What the benchmark scripts share (imported as ``_common``: benchmarks/ is
the script's folder, first on the path)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

CLEAN_UP_S = 120.0  # how long an interrupted run gets to stop its engines and trainer


def write_result(out: dict[str, Any], path: Path) -> None:
    """Write ``out`` to ``path`` as JSON (its folder made if missing) and print it."""
    text = json.dumps(out, indent=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(text)


def run_child(cmd: list[str]) -> None:
    """Run ``cmd`` (a ``sparring run``) to its end; raises CalledProcessError
    when it fails. On Ctrl+C the run gets SIGINT and time to stop its engines
    and trainer and write its summary (``subprocess.run`` would SIGKILL it
    after a quarter of a second, leaving the engines running)."""
    proc = subprocess.Popen(cmd)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # a no-op repeat where the terminal sent one
            try:
                proc.wait(CLEAN_UP_S)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait()
        raise
    if code != 0:
        raise subprocess.CalledProcessError(code, cmd)
