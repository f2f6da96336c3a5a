"""Serving engine processes: start, health-check, stop.

The local profile runs ``transformers serve --continuous-batching`` on the CPU;
it loads any model directory named in a request on demand, which is what the
CPU hot swap relies on. vLLM runs as its own container (docker-compose); the
orchestrator then only talks to it (kind ``vllm``/``external``, managed=False).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sparring.config import EngineConfig
from sparring.serving.hardware import resolve_dtype


class EngineError(RuntimeError):
    pass


def thread_env(threads: int | None) -> dict[str, str]:
    """Cap a child's torch/OpenMP threads. Several busy processes each running one
    thread per core oversubscribe a small CPU; their spinning threads then starve
    each other (measured: a 48-token attack took 234 s instead of ~30 s)."""
    if threads is None:
        return {}
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def serve_command(cfg: EngineConfig) -> list[str]:
    exe = shutil.which("transformers")
    base = [exe] if exe else [sys.executable, "-m", "transformers.cli.transformers"]
    cmd = [
        *base,
        "serve",
        "--host",
        cfg.host,
        "--port",
        str(cfg.port),
        "--device",
        cfg.device,
        "--dtype",
        resolve_dtype(cfg.dtype, cfg.device),
        # Versions left idle this long are unloaded (a later request reloads
        # one), so memory stays bounded as versions accumulate.
        "--model-timeout",
        str(cfg.model_timeout_s),
        "--log-level",
        "warning",
    ]
    if cfg.continuous_batching:
        cmd += [
            "--continuous-batching",
            "--cb-block-size", str(cfg.cb_block_size),
            "--cb-num-blocks", str(cfg.cb_num_blocks),
        ]  # fmt: skip
    return cmd


class EngineProcess:
    """A managed engine subprocess whose output goes to ``log_path``."""

    def __init__(self, name: str, cfg: EngineConfig, log_path: Path) -> None:
        self.name = name
        self.cfg = cfg
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        if self.cfg.kind != "transformers-serve":
            raise EngineError(
                f"engine '{self.name}' is kind {self.cfg.kind}; sparring manages only "
                "transformers-serve engines; start it yourself (docker compose) "
                "and set managed: false"
            )
        if healthy(self.cfg.url()):
            raise EngineError(
                f"something already answers on {self.cfg.url()}; stop it or pick another "
                f"engines.{self.name}.port"
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.update(thread_env(self.cfg.threads))
        self._proc = subprocess.Popen(
            serve_command(self.cfg),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        self.wait_healthy()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc and self._proc.poll() is not None:
                raise EngineError(
                    f"engine '{self.name}' exited with code {self._proc.returncode}; "
                    f"see {self.log_path}"
                )
            if healthy(self.cfg.url()):
                return
            time.sleep(0.3)
        self.stop()
        raise EngineError(
            f"engine '{self.name}' did not answer /health within "
            f"{self.cfg.startup_timeout_s:.0f}s; see {self.log_path}"
        )

    def stop(self, timeout_s: float = 15.0) -> None:
        if not self._proc or self._proc.poll() is not None:
            return
        os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def __enter__(self) -> EngineProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def healthy(base_url: str, timeout_s: float = 2.0) -> bool:
    root = base_url.removesuffix("/").removesuffix("/v1")
    try:
        return httpx.get(f"{root}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


async def wait_for_engine(name: str, cfg: EngineConfig, poll_s: float = 1.0) -> None:
    """Wait until an engine sparring does not manage (vLLM in docker compose)
    answers /health on every replica, up to ``startup_timeout_s``."""
    import asyncio

    urls = cfg.replica_urls()
    deadline = time.monotonic() + cfg.startup_timeout_s
    while True:
        down = [u for u in urls if not await asyncio.to_thread(healthy, u)]
        if not down:
            return
        if time.monotonic() >= deadline:
            raise EngineError(
                f"engine '{name}' does not answer /health at {', '.join(down)} after "
                f"{cfg.startup_timeout_s:.0f}s; start it (docker compose up) or fix "
                f"engines.{name}.base_url / replicas"
            )
        await asyncio.sleep(poll_s)
