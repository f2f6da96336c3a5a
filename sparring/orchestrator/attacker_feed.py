"""The attacker's preference pairs onto the pairs stream (``trainer.roles``
names attacker): built from every finished episode so far, because a pair
compares two episodes' queries for one served request
(:func:`sparring.training.attacker_pairs.attacker_pairs`).

Pairs have stable ids and the bus keeps one message per id, so publishing the
whole set again after each batch of episodes (or after a restart) adds only the
new ones: none is lost, none is trained twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sparring.agents.prompts import load_seeds
from sparring.bus import Bus
from sparring.bus.streams import EPISODES, PAIRS
from sparring.training.attacker_pairs import Embedder, attacker_pairs

# How often the feed looks for new attacker pairs while episodes run.
FEED_EVERY_S = 30.0


def default_embedder() -> Embedder | None:
    """all-MiniLM-L6-v2 (the eval's diversity model); None where it cannot load
    (the pairs then judge intent by shared words, and say so)."""
    try:
        from sparring.eval.diversity import minilm_embedder

        return minilm_embedder()
    except ImportError:
        return None


class AttackerFeed:
    def __init__(self, bus: Bus, log: Any, embed: Embedder | None = None) -> None:
        self._bus = bus
        self._log = log
        self._seeds = load_seeds()
        self._embed = embed
        self._vectors: dict[str, Sequence[float]] = {}
        self.published = 0

    def _cached(self, texts: list[str]) -> Sequence[Sequence[float]]:
        assert self._embed is not None
        new = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if new:
            self._vectors.update(zip(new, self._embed(new), strict=True))
        return [self._vectors[t] for t in texts]

    def publish(self) -> int:
        """Publish the attacker pairs not yet on the bus; returns how many."""
        episodes = EPISODES.records(self._bus)
        embed = self._cached if self._embed is not None else None
        pairs, outcomes = attacker_pairs(episodes, embed, seeds=self._seeds)
        new = sum(PAIRS.publish(self._bus, p.pair_id, p) for p in pairs)
        self.published += new
        if new:
            self._log.info(
                "attacker.pairs",
                new=new,
                pairs=len(pairs),
                outcomes=dict(Counter(o.status for o in outcomes)),
                method=outcomes[0].method if outcomes else None,
            )
        return new

    async def run(self, stop: asyncio.Event, every_s: float = FEED_EVERY_S) -> None:
        """Publish new pairs every ``every_s`` until ``stop``, then once more."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every_s)
            await asyncio.to_thread(self.publish)
