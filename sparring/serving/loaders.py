"""How an engine takes on a new version of a role's model: one class per swap mode.

The swapper drives every mode the same way (load on each replica, warm each
replica with a request naming the version, flip the pointer, later unload what
fell out of the keep window); only these steps differ:

- ``path`` (transformers serve): requests name the version's merged folder; the
  engine loads it on the first request, so the warm-up *is* the load. It has
  no per-model unload; idle versions leave after ``model_timeout_s``.
- ``lora`` (vLLM): ``POST /v1/load_lora_adapter`` with the version's adapter
  directory; requests then name ``<role>-v<N>``; unloaded with
  ``POST /v1/unload_lora_adapter``.
- ``full`` (vLLM without LoRA): the server reloads full weights in place from
  the version's merged folder; requests keep naming the served base model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import httpx

from sparring.config import EngineConfig, RunConfig, SwapMode
from sparring.serving.engine import engine_key
from sparring.serving.vllm import VLLMAdmin

ADAPTER_SUBDIR = "adapter"


class LoadRefused(ValueError):
    """A version this engine cannot take whatever is retried (its adapter's rank
    exceeds the server's ``--max-lora-rank``): never loaded, never retried."""


def adapter_rank(adapter_dir: Path) -> int | None:
    """The LoRA rank in ``adapter_config.json``; None where it cannot be read
    (the folder lives only where the engine runs)."""
    try:
        return int(json.loads((adapter_dir / "adapter_config.json").read_text())["r"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class VersionLoader(Protocol):
    mode: SwapMode

    def model_name(self, role: str, version: int, path: str) -> str:
        """What chat requests name to reach this version."""
        ...

    async def load(self, replica: str, role: str, version: int, path: str) -> None:
        """Make the version available on one replica (before its warm-up)."""
        ...

    async def unload(self, replica: str, role: str, version: int, model: str) -> bool:
        """Free the version on one replica; False when this mode cannot."""
        ...


class PathLoader:
    mode: SwapMode = "path"

    def model_name(self, role: str, version: int, path: str) -> str:
        return path

    async def load(self, replica: str, role: str, version: int, path: str) -> None:
        return None  # the warm-up request loads the folder

    async def unload(self, replica: str, role: str, version: int, model: str) -> bool:
        return False  # transformers serve unloads idle models by itself


class LoraLoader:
    mode: SwapMode = "lora"

    def __init__(
        self, client: httpx.AsyncClient, api_key: str | None = None, max_rank: int | None = None
    ) -> None:
        self._client = client
        self._api_key = api_key
        self._max_rank = max_rank  # the server's --max-lora-rank, where sparring knows it

    def model_name(self, role: str, version: int, path: str) -> str:
        return f"{role}-v{version}"

    def adapter_path(self, path: str) -> str:
        return str(Path(path) / ADAPTER_SUBDIR)

    async def load(self, replica: str, role: str, version: int, path: str) -> None:
        rank = adapter_rank(Path(self.adapter_path(path)))
        if self._max_rank is not None and rank is not None and rank > self._max_rank:
            raise LoadRefused(
                f"{role} v{version}: its adapter has LoRA rank {rank}, above the server's "
                f"--max-lora-rank {self._max_rank} ({self.adapter_path(path)}); raise the "
                "engine's max_lora_rank or train with a smaller trainer.lora_r"
            )
        admin = VLLMAdmin(self._client, replica, self._api_key)
        await admin.load_lora_adapter(self.model_name(role, version, path), self.adapter_path(path))

    async def unload(self, replica: str, role: str, version: int, model: str) -> bool:
        admin = VLLMAdmin(self._client, replica, self._api_key)
        await admin.unload_lora_adapter(model)
        return True


class FullLoader:
    """Full weights reloaded in place: one set of weights per replica, so an old
    version cannot stay loaded beside the new one (see docs/gpu.md)."""

    mode: SwapMode = "full"

    def __init__(self, client: httpx.AsyncClient, served_name: str, api_key: str | None = None):
        self._client = client
        self._served_name = served_name
        self._api_key = api_key

    def model_name(self, role: str, version: int, path: str) -> str:
        return self._served_name

    async def load(self, replica: str, role: str, version: int, path: str) -> None:
        admin = VLLMAdmin(self._client, replica, self._api_key)
        await admin.reload_weights(path)

    async def unload(self, replica: str, role: str, version: int, model: str) -> bool:
        return False  # replaced in place; nothing else is loaded


def make_loader(engine: EngineConfig, client: httpx.AsyncClient, served_name: str) -> VersionLoader:
    mode = engine.swap_mode()
    if mode == "lora":
        max_rank = engine.max_lora_rank if engine.managed else None
        return LoraLoader(client, engine_key(engine), max_rank)
    if mode == "full":
        return FullLoader(client, served_name, engine_key(engine))
    return PathLoader()


def model_name_for(
    engine: EngineConfig, served_name: str, role: str, version: int, path: str
) -> str:
    """What requests name to reach ``version`` on ``engine`` (as its loader would)."""
    mode = engine.swap_mode()
    if mode == "lora":
        return f"{role}-v{version}"
    if mode == "full":
        return served_name
    return path


def adapter_name(role: str) -> str:
    """What requests name to reach ``role``'s own adapter (roles.X.adapter)."""
    return f"{role}-adapter"


async def load_role_adapters(cfg: RunConfig, roles: Iterable[str]) -> list[str]:
    """Load each of ``roles``' own adapters (roles.X.adapter) on every replica of
    its engine, refusing one whose rank exceeds a managed server's maximum;
    returns the names loaded. Loading one already there is not an error."""
    loaded = []
    async with httpx.AsyncClient(timeout=120.0) as http:
        for role in roles:
            rc = cfg.roles[role]
            if rc.adapter is None:
                continue
            engine = cfg.engines[rc.engine]
            rank = adapter_rank(rc.adapter)
            if rank is None:
                raise LoadRefused(
                    f"roles.{role}.adapter: {rc.adapter} holds no readable "
                    "adapter_config.json (a PEFT LoRA folder is expected)"
                )
            if engine.managed and rank > engine.max_lora_rank:
                raise LoadRefused(
                    f"roles.{role}.adapter has LoRA rank {rank}, above engines.{rc.engine}."
                    f"max_lora_rank {engine.max_lora_rank}: raise max_lora_rank"
                )
            for replica in engine.replica_urls():
                admin = VLLMAdmin(http, replica, engine_key(engine))
                await admin.load_lora_adapter(adapter_name(role), str(rc.adapter.resolve()))
            loaded.append(adapter_name(role))
    return loaded
