"""What the attacker and planner gates share: a trained role's version is
measured on fixed probes against a frozen opponent, its figures compared with
the serving version's by :func:`sparring.eval.canary.decide`, and the decision
published once on the ``promotions`` stream with the role's name.

A subclass says how one version is probed (:meth:`ProbeGate.probe`), what its
figures are (:meth:`ProbeGate.figures_of`) and which of them decide
(``tracking``). Figures of versions decided before (this run, on the bus) are
reused, not re-measured, so a restarted swapper gets the same decisions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

from sparring.bus import Bus
from sparring.bus.streams import PROMOTIONS
from sparring.eval.canary import Tracking, decide, decisions
from sparring.llm import Binding
from sparring.schemas import PromotionDecision

P = TypeVar("P")  # one probe's record

Figures = dict[str, float | None]


def success_rate(statuses: Sequence[str]) -> float | None:
    """The share of ``success`` among the statuses with an outcome (not
    ``none``); None when fewer than half have one: a gate never promotes blind."""
    judged = [s for s in statuses if s != "none"]
    if not judged or 2 * len(judged) < len(statuses):
        return None
    return round(sum(s == "success" for s in judged) / len(judged), 4)


class ProbeGate(Generic[P]):
    """Measures versions of ``role`` on fixed probes and decides on candidates."""

    tracking: ClassVar[Tracking]
    event: ClassVar[str]  # the trace event of one measurement
    unit: ClassVar[str]  # what a probe is, in the event and the decision's reason
    opponent: ClassVar[str]  # what the probes are measured against

    def __init__(self, tolerance: Any, bus: Bus, log: Any, role: str) -> None:
        self.role = role
        self._tolerance = tolerance
        self._bus = bus
        self._log = log
        self.figures: dict[int, Figures] = {}
        self.probes: dict[int, list[P]] = {}
        for d in self.decisions().values():
            if d.promoted:
                self.figures[d.version] = d.metrics
            self.figures.setdefault(d.against, d.baseline)

    def decisions(self) -> dict[int, PromotionDecision]:
        return decisions(self._bus, self.role)

    @property
    def size(self) -> int:
        """Probes per measurement."""
        raise NotImplementedError

    async def probe(self, binding: Binding) -> list[P]:
        """Every probe of one measurement of the version ``binding`` serves."""
        raise NotImplementedError

    def figures_of(self, probes: Sequence[P]) -> Figures:
        raise NotImplementedError

    async def measure(self, binding: Binding) -> Figures:
        """The figures of the version ``binding`` serves (once per version)."""
        if binding.version in self.figures:
            return self.figures[binding.version]
        started = time.perf_counter()
        probes = await self.probe(binding)
        figures = self.figures_of(probes)
        self._log.info(
            self.event,
            role=self.role,
            version=binding.version,
            seconds=round(time.perf_counter() - started, 2),
            **{self.unit: len(probes)},
            **figures,
        )
        self.figures[binding.version] = figures
        self.probes[binding.version] = probes
        return figures

    async def check(self, role: str, candidate: Binding, serving: Binding) -> PromotionDecision:
        """The decision on ``candidate`` against ``serving``, published on the
        bus (once per version: a re-delivered announcement gets the same one)."""
        known = self.decisions().get(candidate.version)
        if known is not None:
            return known
        baseline = await self.measure(serving)
        metrics = await self.measure(candidate)
        promoted, reason = decide(metrics, baseline, self._tolerance, self.tracking)
        decision = PromotionDecision(
            role=role,
            version=candidate.version,
            against=serving.version,
            promoted=promoted,
            reason=f"{reason} ({self.opponent}, {self.size} {self.unit})",
            metrics=metrics,
            baseline=baseline,
            canary_prompts=self.size,
        )
        self._bus.publish(
            PROMOTIONS.name, f"{role}-v{candidate.version}", decision.model_dump(mode="json")
        )
        return decision
