"""The bus contract shared by every backend.

Delivery is at-least-once: a message read by a consumer stays pending for its
group until acked, and is handed out again (to the same consumer name after a
restart, or to any consumer once ``claim_after_s`` has passed). Producers pass
an id; publishing the same id twice stores the message once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


class BusError(RuntimeError):
    """A bus that cannot be opened; the message names it and what to do."""


@dataclass(frozen=True)
class Delivery:
    stream: str
    msg_id: str
    payload: dict[str, Any]


@runtime_checkable
class Bus(Protocol):
    def publish(self, stream: str, msg_id: str, payload: dict[str, Any]) -> bool:
        """Store ``payload`` under ``msg_id``; False when that id was already stored."""
        ...

    def read(
        self,
        stream: str,
        group: str,
        consumer: str,
        count: int = 16,
        block_ms: int = 0,
        claim_after_s: float = 60.0,
    ) -> list[Delivery]:
        """Messages not yet acked by ``group``: this consumer's pending ones first,
        then stale ones from other consumers, then new ones."""
        ...

    def ack(self, stream: str, group: str, msg_ids: list[str]) -> None: ...

    def pending(self, stream: str, group: str) -> int:
        """How many messages ``group`` has not acked (read or not)."""
        ...

    def length(self, stream: str) -> int:
        """How many messages were ever stored in ``stream`` (archived ones too)."""
        ...

    def history(self, stream: str) -> list[Delivery]:
        """Every stored message of ``stream``, oldest first."""
        ...

    def set_pointer(self, key: str, value: dict[str, Any]) -> None: ...

    def get_pointer(self, key: str) -> dict[str, Any] | None: ...

    def close(self) -> None: ...
