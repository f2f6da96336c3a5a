"""Role -> served model binding, and the hot swap that moves it.

A role's active version is a pointer on the bus. It moves only after the
engine has loaded the new version and answered a warm-up request naming it;
episodes read the pointer once when they start and keep that binding to the
end, so an in-flight episode never changes weights half way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from sparring.agents.llm import Binding, Chat
from sparring.bus import Bus
from sparring.schemas import RolePointer, VersionPublished

POINTER_KEY = "role:{role}"


class Registry:
    def __init__(self, bus: Bus, base: dict[str, Binding]) -> None:
        self._bus = bus
        self._base = base
        self.in_flight: Counter[tuple[str, int]] = Counter()

    def pointer(self, role: str) -> RolePointer | None:
        raw = self._bus.get_pointer(POINTER_KEY.format(role=role))
        return RolePointer.model_validate(raw) if raw else None

    def binding(self, role: str) -> Binding:
        """The role's binding now: the configured base, or the version the pointer names."""
        base = self._base[role]
        ptr = self.pointer(role)
        if ptr is None:
            return base
        return Binding(role=role, base_url=base.base_url, model=ptr.model, version=ptr.version)

    def flip(self, role: str, version: int, model: str) -> RolePointer:
        ptr = RolePointer(role=role, version=version, model=model)
        self._bus.set_pointer(POINTER_KEY.format(role=role), ptr.model_dump(mode="json"))
        return ptr

    def acquire(self, role: str) -> Binding:
        binding = self.binding(role)
        self.in_flight[(role, binding.version)] += 1
        return binding

    def release(self, binding: Binding) -> None:
        self.in_flight[(binding.role, binding.version)] -= 1


async def warm(
    chat: Chat, binding: Binding, *, temperature: float = 1.0, attempts: int = 3,
    delay_s: float = 2.0,
) -> float:  # fmt: skip
    """Ask the engine for a one-token answer from ``binding``; returns seconds taken.

    On the CPU engine the first request naming a model directory loads it, so a
    success here means the version is loaded and serving. That first request
    also fixes the model's sampling settings under continuous batching
    (``transformers serve`` shares one generation config per loaded model), so
    ``temperature`` is the engine's ``sampling_temperature``, never 0.
    """
    start = time.perf_counter()
    for attempt in range(attempts):
        try:
            await chat(
                binding,
                [{"role": "user", "content": "Hello"}],
                temperature=temperature,
                max_tokens=1,
            )
            return time.perf_counter() - start
        except Exception:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(delay_s * (attempt + 1))
    raise AssertionError("unreachable")


class Swapper:
    """Consumes the trainer's ``versions`` stream: warm each new version, then flip."""

    def __init__(
        self,
        bus: Bus,
        registry: Registry,
        chat: Chat,
        log: Any,
        *,
        group: str,
        on_flip: Callable[[RolePointer], None] | None = None,
        temperature: float = 1.0,
    ) -> None:
        self._bus = bus
        self._temperature = temperature
        self._registry = registry
        self._chat = chat
        self._log = log
        self._group = group
        self._on_flip = on_flip

    async def run(self, stop: asyncio.Event, poll_s: float = 0.5) -> None:
        while not stop.is_set():
            deliveries = await asyncio.to_thread(
                self._bus.read, "versions", self._group, "swapper", 4, 0, 3600.0
            )
            for d in deliveries:
                try:
                    await self.swap(VersionPublished.model_validate(d.payload))
                except Exception:
                    # Not acked: the announcement comes back after a restart,
                    # and serving stays on the version that works.
                    continue
                self._bus.ack("versions", self._group, [d.msg_id])
            if not deliveries:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=poll_s)

    async def swap(self, published: VersionPublished) -> RolePointer | None:
        current = self._registry.pointer(published.role)
        if current is not None and current.version >= published.version:
            return None  # a re-delivered or out-of-date announcement
        base = self._registry.binding(published.role)
        target = Binding(published.role, base.base_url, published.path, published.version)
        self._log.info("swap.warming", role=published.role, version=published.version)
        try:
            seconds = await warm(self._chat, target, temperature=self._temperature)
        except Exception as err:
            self._log.error(
                "swap.failed", role=published.role, version=published.version, error=str(err)
            )
            raise
        ptr = self._registry.flip(published.role, published.version, published.path)
        self._log.info(
            "swap.flipped",
            role=published.role,
            version=published.version,
            previous_version=base.version,
            warm_s=round(seconds, 3),
            in_flight_previous=self._registry.in_flight[(published.role, base.version)],
        )
        if self._on_flip:
            self._on_flip(ptr)
        return ptr
