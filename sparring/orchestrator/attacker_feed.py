"""Each trained role's own preference pairs onto the pairs stream, for the
roles whose pairs compare two episodes (``trainer.roles`` naming attacker or
planner): built from every finished episode so far, because a pair compares
two episodes' outputs for one served request
(:func:`sparring.training.attacker_pairs.attacker_pairs`: the attacker's
queries; :func:`sparring.training.planner_pairs.planner_pairs`: the planner's
plans). The learner's pairs come from each episode alone, in the graph.

Pairs have stable ids and the bus keeps one message per id, so publishing the
whole set again after each batch of episodes (or after a restart) adds only the
new ones: none is lost, none is trained twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sparring.agents.prompts import load_seeds
from sparring.bus import Bus
from sparring.bus.streams import EPISODES, PAIRS
from sparring.schemas import Episode, PreferencePair
from sparring.training.attacker_pairs import Embedder, attacker_pairs
from sparring.training.planner_pairs import planner_pairs

# How often the feed looks for new pairs while episodes run.
FEED_EVERY_S = 30.0

# A role's pairs from every episode so far, and what to log about them.
Builder = Callable[[Sequence[Episode]], tuple[list[PreferencePair], dict[str, Any]]]


def default_embedder() -> Embedder | None:
    """all-MiniLM-L6-v2 (the eval's diversity model); None where it cannot load
    (the pairs then judge intent by shared words, and say so)."""
    try:
        from sparring.eval.diversity import minilm_embedder

        return minilm_embedder()
    except ImportError:
        return None


class RoleFeed:
    """Publishes each role's pairs (``builders``: by role) not yet on the bus."""

    def __init__(self, bus: Bus, log: Any, builders: dict[str, Builder]) -> None:
        self._bus = bus
        self._log = log
        self._builders = builders
        self.published = 0

    def publish(self) -> int:
        """Publish the pairs not yet on the bus; returns how many."""
        episodes = EPISODES.records(self._bus)
        total = 0
        for role, build in self._builders.items():
            pairs, details = build(episodes)
            new = sum(PAIRS.publish(self._bus, p.pair_id, p) for p in pairs)
            if new:
                self._log.info(f"{role}.pairs", new=new, pairs=len(pairs), **details)
            total += new
        self.published += total
        return total

    async def run(self, stop: asyncio.Event, every_s: float = FEED_EVERY_S) -> None:
        """Publish new pairs every ``every_s`` until ``stop``, then once more."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every_s)
            await asyncio.to_thread(self.publish)


class AttackerPairs:
    """The attacker's builder: intent judged against the shipped seeds, with
    each text embedded once per feed."""

    def __init__(self, embed: Embedder | None) -> None:
        self._seeds = load_seeds()
        self._embed = embed
        self._vectors: dict[str, Sequence[float]] = {}

    def _cached(self, texts: list[str]) -> Sequence[Sequence[float]]:
        assert self._embed is not None
        new = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if new:
            self._vectors.update(zip(new, self._embed(new), strict=True))
        return [self._vectors[t] for t in texts]

    def __call__(self, episodes: Sequence[Episode]) -> tuple[list[PreferencePair], dict[str, Any]]:
        embed = self._cached if self._embed is not None else None
        pairs, outcomes = attacker_pairs(episodes, embed, seeds=self._seeds)
        method = outcomes[0].method if outcomes else None
        return pairs, {"outcomes": dict(Counter(o.status for o in outcomes)), "method": method}


def plans(episodes: Sequence[Episode]) -> tuple[list[PreferencePair], dict[str, Any]]:
    """The planner's builder."""
    pairs, outcomes = planner_pairs(episodes)
    return pairs, {"outcomes": dict(Counter(o.status for o in outcomes))}


class AttackerFeed(RoleFeed):
    """The attacker's pairs alone."""

    def __init__(self, bus: Bus, log: Any, embed: Embedder | None = None) -> None:
        super().__init__(bus, log, {"attacker": AttackerPairs(embed)})


def role_feed(roles: Iterable[str], bus: Bus, log: Any) -> RoleFeed | None:
    """The feed of each role in ``roles`` that has one (attacker, planner);
    None when none does (the learner's pairs come from the graph)."""
    builders: dict[str, Builder] = {}
    for role in roles:
        if role == "attacker":
            builders[role] = AttackerPairs(default_embedder())
        elif role == "planner":
            builders[role] = plans
    return RoleFeed(bus, log, builders) if builders else None
