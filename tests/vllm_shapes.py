"""vLLM's HTTP answers, as vLLM 0.33's server gives them, for tests on a machine
where vLLM cannot run (it needs a GPU).

Each answer follows the server's source: LoRA routes in
``vllm/entrypoints/serve/lora`` (200 with a plain-text body; errors as
``{"error": {"message", "type", "param", "code"}}``), the model check in
``serve/engine/serving.py`` (404 for a model name that is neither the base
nor a loaded adapter), ``/v1/models`` cards (adapters listed with ``parent``),
and the development routes behind ``VLLM_SERVER_DEV_MODE=1``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import httpx2


def _error(status: int, kind: str, message: str, param: str | None = None) -> tuple[int, Any]:
    return status, {"error": {"message": message, "type": kind, "param": param, "code": status}}


@dataclass
class VLLMServer:
    """One vLLM server's state: its base model, loaded adapters and the calls it saw."""

    host: str
    base: str = "base"
    adapters: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    refuse_loads: bool = False
    paused: bool = False
    weights: str = "initial"

    def handle(self, method: str, path: str, query: str, body: dict[str, Any]) -> tuple[int, Any]:
        self.calls.append((method, path if not query else f"{path}?{query}", body))
        if path == "/v1/load_lora_adapter":
            return self._load(body)
        if path == "/v1/unload_lora_adapter":
            name = body.get("lora_name", "")
            if name not in self.adapters:
                return _error(404, "NotFoundError", f"The lora adapter '{name}' cannot be found.")
            del self.adapters[name]
            return 200, f"Success: LoRA adapter '{name}' removed successfully."
        if path == "/v1/models":
            cards = [{"id": self.base, "object": "model", "root": self.base, "parent": None}]
            cards += [
                {"id": n, "object": "model", "root": p, "parent": self.base}
                for n, p in self.adapters.items()
            ]
            return 200, {"object": "list", "data": cards}
        if path == "/v1/chat/completions":
            return self._chat(body)
        if path == "/pause":
            self.paused = True
            return 200, {"status": "paused"}
        if path == "/resume":
            self.paused = False
            return 200, {"status": "resumed"}
        if path == "/collective_rpc":
            if body.get("method") != "reload_weights":
                return _error(400, "BadRequestError", "unknown method")
            self.weights = body["kwargs"]["weights_path"]
            return 200, {"results": [None]}
        if path == "/reset_prefix_cache":
            return 200, {"success": True}
        return 404, {"detail": "Not Found"}

    def _load(self, body: dict[str, Any]) -> tuple[int, Any]:
        name, path = body.get("lora_name", ""), body.get("lora_path", "")
        if not name or not path:
            return _error(
                400, "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided."
            )
        if name in self.adapters:
            return _error(
                400, "InvalidUserInput",
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.",
            )  # fmt: skip
        if self.refuse_loads:
            return _error(500, "InternalServerError", "CUDA out of memory")
        if not (Path(path) / "adapter_config.json").is_file():
            return _error(
                404, "NotFoundError", f"Loading lora {name} failed: No adapter found for {path}"
            )
        self.adapters[name] = path
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def _chat(self, body: dict[str, Any]) -> tuple[int, Any]:
        model = body.get("model")
        if self.paused:
            return 503, {"error": {"message": "paused", "type": "ServiceUnavailable", "code": 503}}
        if model != self.base and model not in self.adapters:
            valid = ", ".join([self.base, *self.adapters])
            return _error(
                404, "NotFoundError",
                f"The model `{model}` does not exist. Valid aliases: {valid}", "model",
            )  # fmt: skip
        return 200, {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"answer from {model}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        }


class Cluster:
    """Several vLLM servers by host name, reachable through httpx (the admin
    client) and httpx2 (the openai package's client)."""

    def __init__(self, *hosts: str) -> None:
        self.servers = {h: VLLMServer(h) for h in hosts}

    def _answer(self, host: str, method: str, path: str, query: str, raw: bytes):  # type: ignore[no-untyped-def]
        body = json.loads(raw) if raw else {}
        status, payload = self.servers[host].handle(method, path, query, body)
        if isinstance(payload, str):
            return status, payload.encode(), "text/plain"
        return status, json.dumps(payload).encode(), "application/json"

    def httpx_client(self) -> httpx.AsyncClient:
        def handler(req: httpx.Request) -> httpx.Response:
            status, content, ctype = self._answer(
                req.url.host, req.method, req.url.path, req.url.query.decode(), req.content
            )
            return httpx.Response(status, content=content, headers={"content-type": ctype})

        return httpx.AsyncClient(transport=httpx.MockTransport(handler))

    def httpx2_client(self) -> Any:
        def handler(req: Any) -> Any:
            status, content, ctype = self._answer(
                req.url.host, req.method, req.url.path, "", req.read()
            )
            return httpx2.Response(status, content=content, headers={"content-type": ctype})

        return httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
