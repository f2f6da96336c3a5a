"""Every stream on the bus, named once, with the record it carries.

- ``tasks`` (:class:`EpisodeTask`): added by the work queue, read by the
  orchestrators (group ``orchestrators``);
- ``episodes`` (``Episode``): the graph's emit node; summary, report, eval and
  the review watcher read it whole;
- ``pairs`` (``PreferencePair``): the emit node; the trainer (group ``trainer``);
- ``versions`` (``VersionPublished``): the trainer; each orchestrator's swapper
  (a group each), the summary;
- ``promotions`` (``PromotionDecision``): the canary gate; the trainer, summary
  and report read it whole;
- ``review_requests`` (``ReviewRequest``): the review node; ``sparring review``;
- ``reviews`` (``HumanReview``): ``sparring review``; each orchestrator's
  review watcher.

A *record* stream is only ever read whole (``history``), never by a consumer
group: the Redis bus may archive its old entries while no group exists. Any
other stream keeps every entry until a group has acked it (a trainer that
starts late still gets every pair).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from sparring.bus.base import Bus
from sparring.schemas import (
    Episode,
    HumanReview,
    PreferencePair,
    PromotionDecision,
    ReviewRequest,
    VersionPublished,
    Wire,
)

R = TypeVar("R", bound=BaseModel)


class EpisodeTask(Wire):
    """An episode to run: its index in the run, and the orchestrator that added it."""

    index: int
    by: str


@dataclass(frozen=True)
class Stream(Generic[R]):
    name: str
    record: type[R]
    whole_only: bool = False  # a record stream: read whole, never by a group

    def parse(self, payload: dict[str, Any]) -> R:
        return self.record.model_validate(payload)

    def publish(self, bus: Bus, msg_id: str, record: R) -> bool:
        """Store ``record`` under ``msg_id`` (once: the same id again is a no-op)."""
        return bus.publish(self.name, msg_id, record.model_dump(mode="json"))

    def records(self, bus: Bus) -> list[R]:
        """Every entry, oldest first, parsed (one that does not parse raises)."""
        return [self.parse(d.payload) for d in bus.history(self.name)]


TASKS = Stream("tasks", EpisodeTask)
EPISODES = Stream("episodes", Episode, whole_only=True)
PAIRS = Stream("pairs", PreferencePair)
VERSIONS = Stream("versions", VersionPublished)
PROMOTIONS = Stream("promotions", PromotionDecision, whole_only=True)
REVIEW_REQUESTS = Stream("review_requests", ReviewRequest, whole_only=True)
REVIEWS = Stream("reviews", HumanReview)

ALL: tuple[Stream[Any], ...] = (
    TASKS,
    EPISODES,
    PAIRS,
    VERSIONS,
    PROMOTIONS,
    REVIEW_REQUESTS,
    REVIEWS,
)
# the record streams' names (sparring.bus.redis archives their old entries)
RECORD_STREAMS = frozenset(s.name for s in ALL if s.whole_only)
