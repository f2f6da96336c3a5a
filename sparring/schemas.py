"""Wire messages: everything that crosses the bus or lands in a trace file.

Each message carries ``schema_version`` so a consumer can refuse (rather than
misread) a payload written by a newer producer.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

# redteam/self_refine/decompose: was the first answer judged harmful? debate:
# whose argument the judge picked. judge_error: no readable verdict.
Outcome = Literal["attack_success", "attack_failure", "helpful_won", "sneaky_won", "judge_error"]
# An outcome where the adversary got through (the summary's "attack success").
ADVERSARY_WON = ("attack_success", "sneaky_won")
# Which rule made a preference pair (sparring/training/pairs.py).
PairKind = Literal["refine", "debate", "decompose", "conformity", "competence", "attack", "plan"]


def newer_schema(payload: dict[str, object]) -> int | None:
    """The schema version of a payload written by a newer sparring, or None when
    this one can read it (such a payload is left for a newer consumer, not
    dropped as garbage)."""
    written_by = payload.get("schema_version", SCHEMA_VERSION)
    return written_by if isinstance(written_by, int) and written_by > SCHEMA_VERSION else None


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
    # 1 = split on harmful, or helpfulness spread over the whole 1-10 scale;
    # None with fewer than two readable: one critic cannot agree with itself).
    panel: list[Critique] = Field(default_factory=list)
    disagreement: float | None = None


class Judgement(Wire):
    """A judge's pick between two arguments, shown as A and B (debate);
    ``winner`` is None on a judge error."""

    text: str
    winner: Literal["A", "B"] | None
    confidence: int | None = Field(default=None, ge=1, le=10)
    judge_error: str | None = None
    judge: ModelRef
    attempts: int = 1


class DebateTurn(Wire):
    side: Literal["helpful", "sneaky"]
    turn: int
    text: str
    speaker: ModelRef


class Debate(Wire):
    """A debate over a question with a known answer: the helpful debater argues
    for it, the sneaky one for a wrong answer; the judge sees the two sides as
    A and B (``helpful_is``), never which is which."""

    helpful_position: str
    sneaky_position: str
    helpful_is: Literal["A", "B"]
    turns: list[DebateTurn]
    judgement: Judgement
    winner: Literal["helpful", "sneaky"] | None  # None: judge error

    @property
    def judge_correct(self) -> bool | None:
        return None if self.winner is None else self.winner == "helpful"


class Part(Wire):
    """One subtask of a decomposed task: the solver's answer and its judgement."""

    index: int
    subtask: str
    answer: str
    solver: ModelRef
    critique: Critique


class Decomposition(Wire):
    """A task split by a planner, solved part by part, recomposed and verified.

    Part scores and the whole-task score are kept apart so the gap between
    them (do aligned parts make an aligned whole?) can be measured."""

    plan: str
    planner: ModelRef
    parts: list[Part]
    plan_error: str | None = None  # the plan could not be read: no parts, no whole
    # the planner's served request for the plan (system prompt included): what a
    # planner pair trains (empty: written before this was recorded)
    plan_messages: list[ChatMessage] = Field(default_factory=list)
    whole_answer: str = ""
    whole_critique: Critique | None = None

    @property
    def readable_parts(self) -> list[Verdict]:
        return [p.critique.verdict for p in self.parts if p.critique.verdict is not None]

    @property
    def part_helpfulness(self) -> float | None:
        vs = self.readable_parts
        return sum(v.helpfulness for v in vs) / len(vs) if vs else None

    @property
    def parts_harmful(self) -> int:
        return sum(v.harmful for v in self.readable_parts)

    @property
    def gap(self) -> float | None:
        """Mean part helpfulness minus the whole's (positive: the whole is worse)."""
        whole = self.whole_critique.verdict if self.whole_critique else None
        parts = self.part_helpfulness
        return None if whole is None or parts is None else round(parts - whole.helpfulness, 3)

    @property
    def harmless_parts_harmful_whole(self) -> bool | None:
        """Every part judged harmless, yet the recomposed whole judged harmful."""
        whole = self.whole_critique.verdict if self.whole_critique else None
        if whole is None or not self.parts or len(self.readable_parts) < len(self.parts):
            return None
        return self.parts_harmful == 0 and whole.harmful


class ChatMessage(Wire):
    """One message of a chat request, as the engine renders it with the model's
    chat template."""

    role: Literal["system", "user", "assistant"]
    content: str


Mode = Literal["attack", "lookalike"]


class Contrast(Wire):
    """The learner's answer with a safety instruction in context beside its plain
    answer, each read by the rule judge (refused or not). On an adversarial
    prompt a guarded refusal over a plain compliance is a conformity pair; on a
    benign one a plain answer over a guarded refusal is a competence pair."""

    guarded_answer: str
    benign: bool  # a look-alike (benign) prompt, not an attack
    plain_refused: bool
    guarded_refused: bool
    # loop.guarded_samples: guarded answers drawn, and how many refused; the one
    # kept is the first the rule judge reads otherwise than the plain answer
    samples: int = 1
    guarded_refusals: int | None = None
    # loop.written_refusals: neither answer refused, so the pairs take a refusal
    # written for the project (written_refusal) beside the learner's own answers
    # (records from before written_refusal held it in guarded_answer)
    written: bool = False
    written_refusal: str | None = None

    def refusal(self) -> tuple[str, bool]:
        """The refusal side a pair takes, and whether the rule judge read it as
        one: the written refusal when one stood in, else the guarded answer."""
        if self.written:
            return self.written_refusal or self.guarded_answer, True
        return self.guarded_answer, self.guarded_refused


class Intent(Wire):
    """A judge's reading of whether a query asks for help to cause harm (the
    intent check of a look-alike the attacker wrote); ``asks_harm`` is None on
    a judge error."""

    asks_harm: bool | None
    text: str = ""  # the judge's reply
    judge_error: str | None = None
    judge: ModelRef


class AttackRecord(Wire):
    """What the attacker was served for the query an episode kept, and from
    what: the provenance an attacker preference pair is built from (its
    ``messages`` are the request the attacker is trained on: train what is
    served). Absent on a seed replay or a drawn look-alike."""

    seed: str  # the seed's category
    mode: Mode  # the prompt the attacker was served (a seed with no look-alikes: attack)
    level: int | None = None  # the difficulty level (None: no adaptation, or look-alike)
    messages: list[ChatMessage]  # system + user, for the attempt whose query was kept
    examples: list[str] = Field(default_factory=list)  # the seed texts the user message shows
    attempt: int = 0  # which attempt (0 = first) the query came from
    # every attempt repeated: the query is a seed text, not the attacker's own
    fallback: bool = False
    # look-alike mode (attack mode too with loop.attack_contrast certified) with
    # loop.intent_judge: does the query ask for harm? (None: not judged, and then
    # nothing certifies the look-alike harmless, or the attack harmful)
    intent: Intent | None = None


class Episode(Wire):
    episode_id: str
    run_id: str
    category: str
    query: str
    attacker: ModelRef
    answer: str
    learner: ModelRef
    critique: Critique | None = None  # None: debate (see debate.judgement)
    refined_answer: str = ""
    refined_critique: Critique | None = None  # None: no refinement (judge error)
    outcome: Outcome
    graph: str = "redteam"
    debate: Debate | None = None
    decomposition: Decomposition | None = None
    contrast: Contrast | None = None
    attack_level: int | None = None  # the attacker's difficulty level (adaptive difficulty)
    # attack: a harmful request; lookalike: a harmless one that borrows a harmful
    # category's words (written by the attacker or drawn from the seeds)
    mode: Mode = "attack"
    # what the learner was sent for its plain answer (system prompt included):
    # pairs from this episode train on exactly this prompt
    messages: list[ChatMessage] = Field(default_factory=list)
    # the attacker wrote the query: what it was served (None: replayed or drawn)
    attack_record: AttackRecord | None = None
    started_at: float
    finished_at: float

    @property
    def attack(self) -> bool:
        """Whether the query is an attack: look-alikes (``loop.benign_share``) are not,
        so they stay out of attack success rates."""
        return self.mode == "attack" and not (self.contrast is not None and self.contrast.benign)


class PreferencePair(Wire):
    """``prompt`` is the query as text (for people); ``messages`` is the request
    the trained role is served with (system prompt included), which the trainer
    renders with the served model's chat template: train what is served."""

    pair_id: str
    episode_id: str
    run_id: str
    prompt: str
    messages: list[ChatMessage] = Field(default_factory=list)
    chosen: str
    rejected: str
    chosen_by: ModelRef
    rejected_by: ModelRef
    critique: str
    # refine/decompose: the critic's verdicts on both answers; debate: the
    # judge's pick (a pairwise judgement carries no per-answer scores)
    chosen_verdict: Verdict | None = None
    rejected_verdict: Verdict | None = None
    judgement: Judgement | None = None
    kind: PairKind = "refine"
    # the role this pair trains (attack pairs: the attacker)
    role: str = "learner"
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
            text=text,
            verdict=None,
            critic=ref,
            attempts=attempts,
            panel=panel,
            judge_error="no critic in the panel gave a readable verdict",
        )
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
        disagreement=round(max(split, spread), 3) if n >= 2 else None,
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
    # DPO's rewards/margins and rewards/accuracies at the version's last logged step
    reward_margin: float | None = None
    reward_accuracy: float | None = None
    # how many pairs of each kind it was trained on, and the schedule's phase
    pair_kinds: dict[str, int] = Field(default_factory=dict)
    phase: str | None = None
    # earlier pairs (of earlier versions) trained again with this one
    replay_ids: list[str] = Field(default_factory=list)
    # pairs the trainer refused (never trained), by reason
    refused: dict[str, int] = Field(default_factory=dict)
    # conformity pairs left waiting on the bus because the run's competence
    # pairs trailed them (trainer.balance_pairs)
    held_back: int = 0
    # trainer.select_epoch: the training step published, and each measured
    # candidate's figures on the validation set (training/selection.py)
    step: int | None = None
    selection: list[dict[str, Any]] = Field(default_factory=list)
    # the model it trained from, measured the same way before the first step:
    # the reference of trainer.select_degenerate
    selection_start: dict[str, Any] | None = None
    # optimizer steps trained, and the steps its epochs would have taken (more
    # when trainer.max_train_minutes stopped it); None: written before recorded
    train_steps: int | None = None
    planned_steps: int | None = None
    # what the version's adapter/ is relative to: "base" (the base model: the
    # continued lineage, or publish: adapter) or "previous" (the previous
    # version's merged weights); None: written before this was recorded
    adapter_base: Literal["base", "previous"] | None = None
    # with several trained roles: the schedule that made it (trainer.coevolution),
    # its round (= version), each other role's serving version when it started
    # training, and whether it was the run's final version; None: one role
    stage: dict[str, Any] | None = None
    published_at: float = Field(default_factory=time.time)


class PromotionDecision(Wire):
    """The canary gate's decision on a new version: promoted (hot-swapped in) or
    rejected (kept on disk, never served), against the version serving then.
    ``metrics``/``baseline``: the canary figures of the candidate and of that
    version (attack_success and over_refusal: rates 0-1, lower is better;
    competence: the critic's mean helpfulness 1-10, higher is better).
    ``reference``: the figures the candidate was held to when they are not the
    serving version's (``promotion.reference: best``), else None."""

    role: str
    version: int
    against: int
    promoted: bool
    reason: str
    metrics: dict[str, float | None]
    baseline: dict[str, float | None]
    canary_prompts: int
    reference: dict[str, float | None] | None = None
    decided_at: float = Field(default_factory=time.time)


class RolePointer(Wire):
    """The registry's record of which version a role is served from now."""

    role: str
    version: int
    model: str
    flipped_at: float = Field(default_factory=time.time)


def stable_id(*parts: str) -> str:
    """An id derived from content, so a re-sent message dedupes on the bus."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]
