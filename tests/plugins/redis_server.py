"""A real ``redis-server`` for the tests, started once per session on a free port."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sparring.process import free_port

_START_TIMEOUT_S = 10.0


def _wait_for_ping(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    client = redis.Redis.from_url(url)
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                out = log.read_text(errors="replace")
                pytest.fail(f"redis-server exited with {proc.returncode}:\n{out}")
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        pytest.fail(f"redis-server did not answer PING within {_START_TIMEOUT_S}s")
    finally:
        client.close()


def _start(binary: str, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(tmp)]
    log = tmp / "redis-server.log"
    # A file, not a pipe: nobody drains a pipe, and a full one would stall the server.
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_for_ping(url, proc, log)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, url


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        # The Redis backend is a supported deployment, so its tests must not go quiet.
        pytest.fail("redis-server is not on PATH; run scripts/setup.sh to install it")
    proc, url = _start(binary, tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a redis-server, SIGKILL it if it has not exited within 5 s."""
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """The session server, emptied so each test starts from a clean slate."""
    client = redis.Redis.from_url(redis_server_url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server_url
