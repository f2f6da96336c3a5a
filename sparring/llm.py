"""The one way agents reach a model: an OpenAI-compatible chat endpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from openai import AsyncOpenAI

from sparring.redact import mask_text

Message = dict[str, str]


@dataclass(frozen=True)
class Binding:
    """Which served model answers for a role right now."""

    role: str
    base_url: str
    model: str
    version: int = 0


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    binding: Binding
    # why generation stopped: "stop" (the model ended), "length" (max_tokens
    # reached), or what else the engine said; None where no engine was asked
    finish_reason: str | None = None


class NoTextError(RuntimeError):
    """The engine answered without any text (no choice, or ``content: null``):
    an engine fault, not an empty answer, so it is never judged or paired."""


class Chat(Protocol):
    async def __call__(
        self, binding: Binding, messages: list[Message], *, temperature: float, max_tokens: int
    ) -> Completion: ...


T = TypeVar("T")


async def ask_parsed(
    chat: Chat,
    binding: Binding,
    messages: list[Message],
    parse: Callable[[Completion], T],
    error: type[ValueError],
    *,
    retries: int,
    temperature: float,
    max_tokens: int,
) -> tuple[T | None, list[Completion], str]:
    """Ask until ``parse`` reads the reply, re-sampling at most ``retries`` times:
    ``(value, calls, "")``, or ``(None, calls, why)`` when no reply parsed (an
    ``error`` from ``parse``): a value is never guessed."""
    calls: list[Completion] = []
    problem = ""
    for _ in range(retries + 1):
        out = await chat(binding, messages, temperature=temperature, max_tokens=max_tokens)
        calls.append(out)
        try:
            return parse(out), calls, ""
        except error as err:
            problem = str(err)
    return None, calls, problem


class OpenAIChat:
    """Chat over HTTP with one pooled client per endpoint."""

    def __init__(
        self,
        timeout_s: float = 120.0,
        max_retries: int = 2,
        http_client: Any = None,
        role_timeouts: dict[str, float] | None = None,
        api_keys: dict[str, str] | None = None,
    ) -> None:
        """``http_client``: the AsyncClient the openai package should use (its own
        httpx flavour), e.g. with a test transport; default: its own.
        ``role_timeouts``: seconds per request by the binding's role (the
        roles' ``timeout_s``); other roles get ``timeout_s``. ``api_keys``: the
        bearer key by engine address (serving.engine.engine_keys)."""
        self._timeout_s = timeout_s
        self._role_timeouts = dict(role_timeouts or {})
        self._max_retries = max_retries
        self._http_client = http_client
        self._clients: dict[str, AsyncOpenAI] = {}
        self._api_keys = dict(api_keys or {})

    def _client(self, base_url: str) -> AsyncOpenAI:
        if base_url not in self._clients:
            self._clients[base_url] = AsyncOpenAI(
                base_url=base_url,
                api_key=self._api_keys.get(base_url.rstrip("/"), "sparring-local"),
                timeout=self._timeout_s,
                max_retries=self._max_retries,
                http_client=self._http_client,
            )
        return self._clients[base_url]

    async def __call__(
        self, binding: Binding, messages: list[Message], *, temperature: float, max_tokens: int
    ) -> Completion:
        start = time.perf_counter()
        resp = await self._client(binding.base_url).chat.completions.create(
            model=binding.model,
            messages=messages,  # type: ignore[arg-type]
            temperature=temperature,
            max_tokens=max_tokens,
            timeout=self._role_timeouts.get(binding.role, self._timeout_s),
        )
        latency = time.perf_counter() - start
        usage = resp.usage
        choice = resp.choices[0] if resp.choices else None
        if choice is None or choice.message.content is None:
            why = choice.finish_reason if choice else "no choices"
            raise NoTextError(
                f"{binding.role}: the engine at {mask_text(binding.base_url)} ({binding.model}) "
                f"returned no text (finish_reason={why})"
            )
        return Completion(
            text=choice.message.content.strip(),
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            latency_s=latency,
            binding=binding,
            finish_reason=choice.finish_reason,
        )

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
