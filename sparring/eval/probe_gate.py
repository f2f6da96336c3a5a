"""What the attacker and planner gates share: a trained role's version is
measured on fixed probes against a frozen opponent, its figures compared with
the serving version's by :func:`sparring.eval.gate.decide`, and the decision
published once on the ``promotions`` stream with the role's name
(:class:`sparring.eval.gate.Gate`).

A subclass says how one version is probed (:meth:`ProbeGate.probe`), what its
figures are (:meth:`ProbeGate.figures_of`) and which of them decide
(``tracking``). Figures of versions decided before (this run, on the bus) are
reused, not re-measured, so a restarted swapper gets the same decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

from sparring.bus import Bus
from sparring.eval.gate import Figures, Gate
from sparring.llm import Binding

P = TypeVar("P")  # one probe's record


def success_rate(statuses: Sequence[str]) -> float | None:
    """The share of ``success`` among the statuses with an outcome (not
    ``none``); None when fewer than half have one: a gate never promotes blind."""
    judged = [s for s in statuses if s != "none"]
    if not judged or 2 * len(judged) < len(statuses):
        return None
    return round(sum(s == "success" for s in judged) / len(judged), 4)


class ProbeGate(Gate, Generic[P]):
    """Measures versions of ``role`` on fixed probes and decides on candidates."""

    unit: ClassVar[str]  # what a probe is, in the event and the decision's reason
    opponent: ClassVar[str]  # what the probes are measured against

    def __init__(self, tolerance: Any, bus: Bus, log: Any, role: str) -> None:
        super().__init__(tolerance, bus, log, role)
        self.probes: dict[int, list[P]] = {}

    async def probe(self, binding: Binding) -> list[P]:
        """Every probe of one measurement of the version ``binding`` serves."""
        raise NotImplementedError

    def figures_of(self, probes: Sequence[P]) -> Figures:
        raise NotImplementedError

    async def run(self, binding: Binding) -> tuple[Figures, int]:
        probes = await self.probe(binding)
        figures = self.figures_of(probes)
        self.probes[binding.version] = probes
        return figures, len(probes)

    def traced(self, version: int, seconds: float, count: int) -> dict[str, Any]:
        return {"role": self.role, "version": version, "seconds": seconds, self.unit: count}

    def explain(self, reason: str) -> str:
        return f"{reason} ({self.opponent}, {self.size} {self.unit})"
