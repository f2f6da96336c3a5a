"""Child processes sparring starts and stops (engines, the trainer), and a free
port to start one on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now; the OS picks it."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ManagedProcess:
    """A child in a session of its own, its output appended to ``log_path``.

    Stopping signals the whole process group, so whatever the child started
    (an engine's workers) stops with it."""

    stop_timeout_s = 15.0  # between SIGTERM and SIGKILL

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def spawn(self, cmd: list[str], env: dict[str, str]) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as an OOM killer or a pulled plug would (used by the crash tests)."""
        if self.alive():
            assert self._proc is not None
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s`` (default: ``stop_timeout_s``)."""
        if not self.alive():
            return
        assert self._proc is not None
        os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(self.stop_timeout_s if timeout_s is None else timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
