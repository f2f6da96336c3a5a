"""vLLM's admin endpoints, as its OpenAI-compatible server documents them.

Runtime LoRA loading needs the server started with ``--enable-lora`` (and
``--max-lora-rank`` at least the trainer's ``lora_r``) and the environment
variable ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``. A load or unload call
reaches only the replica that answers it, so callers address each replica
directly.

Chat requests are unchanged: a loaded adapter is named by its ``lora_name`` in
the request's ``model`` field.

Full-weight reload (no LoRA) uses the development routes that exist only with
``VLLM_SERVER_DEV_MODE=1``: ``/pause``, ``/collective_rpc`` calling the
workers' ``reload_weights`` with the new folder, ``/reset_prefix_cache`` and
``/resume``.

Shapes (vLLM 0.33): success of a LoRA call is HTTP 200 with a plain-text body
("Success: LoRA adapter 'x' added successfully."); errors are JSON
``{"error": {"message", "type", "param", "code"}}`` with the HTTP status in
``code``: 400 for an adapter name already loaded, 404 for a missing adapter
directory on load or an unknown name on unload.
"""

from __future__ import annotations

from typing import Any

import httpx

from sparring.redact import mask_text


class VLLMError(RuntimeError):
    """vLLM answered an admin call with an error; the message carries its words."""

    def __init__(self, url: str, status: int, message: str) -> None:
        super().__init__(f"{mask_text(url)}: HTTP {status}: {message}")
        self.status = status
        self.message = message


def server_root(base_url: str) -> str:
    """``http://host:8000/v1`` -> ``http://host:8000`` (admin routes sit beside /v1)."""
    return base_url.rstrip("/").removesuffix("/v1")


def error_message(resp: httpx.Response) -> str:
    """vLLM's error body is ``{"error": {"message": ...}}`` (or, in older servers,
    ``{"message": ...}`` at the top level); anything else is returned as text."""
    try:
        body: Any = resp.json()
    except ValueError:
        return resp.text.strip()
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and "message" in inner:
            return str(inner["message"])
    return resp.text.strip()


class VLLMAdmin:
    """Admin calls against one vLLM server (one replica)."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, api_key: str | None = None):
        self._client = client
        self.base_url = base_url
        self._root = server_root(base_url)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def _post(self, path: str, payload: dict[str, Any]) -> httpx.Response:
        url = f"{self._root}{path}"
        resp = await self._client.post(url, json=payload, headers=self._headers)
        if resp.status_code >= 400:
            raise VLLMError(url, resp.status_code, error_message(resp))
        return resp

    async def load_lora_adapter(self, lora_name: str, lora_path: str) -> bool:
        """Load an adapter; False when one of that name was already loaded (a
        re-delivered announcement after a restart), which is not an error here:
        adapter directories are immutable, so the loaded one is the same."""
        try:
            await self._post(
                "/v1/load_lora_adapter", {"lora_name": lora_name, "lora_path": lora_path}
            )
        except VLLMError as err:
            if err.status == 400 and "already been loaded" in err.message:
                return False
            raise
        return True

    async def unload_lora_adapter(self, lora_name: str) -> bool:
        """Unload an adapter; False when the server did not have it (already gone)."""
        try:
            await self._post("/v1/unload_lora_adapter", {"lora_name": lora_name})
        except VLLMError as err:
            if err.status == 404:
                return False
            raise
        return True

    async def reload_weights(self, weights_path: str, rpc_timeout_s: float = 600.0) -> None:
        """Replace the served weights in place with the model folder ``weights_path``.

        Requests are drained first (``/pause?mode=wait``: running ones finish,
        new ones wait) so no answer mixes two versions, and the prefix cache,
        whose entries were computed by the old weights, is dropped before the
        server resumes.
        """
        await self._post("/pause?mode=wait", {})
        try:
            await self._post(
                "/collective_rpc",
                {
                    "method": "reload_weights",
                    "kwargs": {"weights_path": weights_path},
                    "timeout": rpc_timeout_s,
                },
            )
            await self._post("/reset_prefix_cache", {})
        finally:
            await self._post("/resume", {})

    async def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: the base model and every loaded adapter (``parent``
        names an adapter's base)."""
        resp = await self._client.get(f"{self._root}/v1/models", headers=self._headers)
        if resp.status_code >= 400:
            raise VLLMError(f"{self._root}/v1/models", resp.status_code, error_message(resp))
        data = resp.json().get("data", [])
        return [m for m in data if isinstance(m, dict)]
