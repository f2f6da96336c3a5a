"""Wire messages: everything that crosses the bus or lands in a trace file.

Each message carries ``schema_version`` so a consumer can refuse (rather than
misread) a payload written by a newer producer.
"""

from __future__ import annotations

import hashlib
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

Outcome = Literal["attack_success", "attack_failure", "judge_error"]


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: int = SCHEMA_VERSION


class ModelRef(Wire):
    """Which weights answered: role, served model name and version number."""

    role: str
    model: str
    version: int = 0


class Verdict(Wire):
    harmful: bool
    helpfulness: int = Field(ge=1, le=10)
    confidence: int = Field(ge=1, le=10)


class Critique(Wire):
    """A critic's judgement of one answer; ``verdict`` is None on a judge error."""

    text: str
    verdict: Verdict | None
    judge_error: str | None = None
    critic: ModelRef
    attempts: int = 1
    # Peer review (loop.critics names several roles): each critic's own
    # judgement, and how much their readable verdicts disagree (0 = all agree,
    # 1 = split on harmful, or helpfulness spread over the whole 1-10 scale).
    panel: list[Critique] = Field(default_factory=list)
    disagreement: float | None = None


class Episode(Wire):
    episode_id: str
    run_id: str
    category: str
    query: str
    attacker: ModelRef
    answer: str
    learner: ModelRef
    critique: Critique
    refined_answer: str = ""
    refined_critique: Critique | None = None  # None: no refinement (judge error)
    outcome: Outcome
    started_at: float
    finished_at: float


class PreferencePair(Wire):
    pair_id: str
    episode_id: str
    run_id: str
    prompt: str
    chosen: str
    rejected: str
    chosen_by: ModelRef
    rejected_by: ModelRef
    critique: str
    chosen_verdict: Verdict
    rejected_verdict: Verdict
    # human: a verdict behind this pair came from a person (sparring review);
    # the trainer counts it `weight` times.
    source: Literal["ai", "human"] = "ai"
    weight: float = Field(default=1.0, gt=0)
    created_at: float = Field(default_factory=time.time)


class ReviewRequest(Wire):
    """An episode paused for a person's verdict (the critic was not confident)."""

    episode_id: str
    run_id: str
    node: str  # which critique is under review: critique or critique_refined
    query: str
    answer: str
    critique: str
    verdict: Verdict | None
    reason: str
    requested_at: float = Field(default_factory=time.time)


class HumanReview(Wire):
    """A person's verdict and critique for a paused episode (``sparring review``)."""

    episode_id: str
    node: str
    harmful: bool
    helpfulness: int = Field(ge=1, le=10)
    critique: str = Field(min_length=1)
    reviewer: str = "human"
    reviewed_at: float = Field(default_factory=time.time)

    def as_critique(self) -> Critique:
        return Critique(
            text=self.critique,
            verdict=Verdict(harmful=self.harmful, helpfulness=self.helpfulness, confidence=10),
            critic=ModelRef(role="human", model=self.reviewer, version=0),
        )


def combine_panel(panel: list[Critique]) -> Critique:
    """Several critics' judgements as one: harmful by majority (a tie counts as
    harmful), helpfulness and confidence averaged; unreadable verdicts are left
    out, and a panel with none readable is a judge error."""
    text = "\n\n".join(f"[{c.critic.role}] {c.text}" for c in panel)
    ref = ModelRef(role="panel", model="+".join(c.critic.model for c in panel), version=0)
    readable = [c.verdict for c in panel if c.verdict is not None]
    attempts = sum(c.attempts for c in panel)
    if not readable:
        return Critique(
            text=text, verdict=None, critic=ref, attempts=attempts, panel=panel,
            judge_error="no critic in the panel gave a readable verdict",
        )  # fmt: skip
    n = len(readable)
    harmful = sum(v.harmful for v in readable)
    helps = [v.helpfulness for v in readable]
    verdict = Verdict(
        harmful=2 * harmful >= n,
        helpfulness=round(sum(helps) / n),
        confidence=max(1, round(sum(v.confidence for v in readable) / n)),
    )
    split = 2 * min(harmful, n - harmful) / n
    spread = (max(helps) - min(helps)) / 9
    return Critique(
        text=text,
        verdict=verdict,
        critic=ref,
        attempts=attempts,
        panel=panel,
        disagreement=round(max(split, spread), 3),
    )


def review_id(episode_id: str, node: str) -> str:
    return f"{episode_id}:{node}"


class VersionPublished(Wire):
    """The trainer's announcement that version ``version`` of ``role`` is on disk."""

    role: str
    version: int
    path: str
    base_version: int
    pair_ids: list[str]
    train_loss: float | None = None
    train_seconds: float = 0.0
    published_at: float = Field(default_factory=time.time)


class RolePointer(Wire):
    """The registry's record of which version a role is served from now."""

    role: str
    version: int
    model: str
    flipped_at: float = Field(default_factory=time.time)


def stable_id(*parts: str) -> str:
    """An id derived from content, so a re-sent message dedupes on the bus."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]
