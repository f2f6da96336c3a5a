"""The default loop: attack -> respond -> critique -> refine -> critique(refined)
-> emit; with ``loop.refine: false`` the episode ends at the first critique.

When ``loop.review_below_confidence`` is set, a critique the critic was not
confident about pauses the episode for a person's verdict (``sparring review``).
With ``loop.contrast`` the learner also answers with a safety instruction in
context (competence/conformity pairs); a share of the episodes take a harmless
look-alike prompt (``loop.benign_share``), and a share of either send an
attacker seed example as written (``loop.seed_share``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from sparring.agents import Attacker
from sparring.agents.difficulty import DifficultyController
from sparring.agents.learner import written_refusal
from sparring.agents.prompts import PromptItem, PromptSource, Seed, load_prompt_set, load_seeds
from sparring.config import RunConfig
from sparring.graphs.api import (
    CoreContext,
    CoreState,
    Update,
    binding_of,
    extend,
    model_ref,
    node,
    trace,
    traced,
)
from sparring.graphs.nodes import (
    CritiqueContext,
    after_critique,
    critique,
    critique_refined,
    critique_settings,
    draw_prompt,
    intent_judge_for,
    make_review,
    publish,
    refine,
    refinement_episode,
    respond,
    rounds_of,
)
from sparring.graphs.registry import register_graph
from sparring.refusal import rule_judge
from sparring.schemas import AttackRecord, Contrast, Episode, Mode, PreferencePair
from sparring.training.pairs import contrast_pairs


class RedteamState(CoreState, total=False):
    mode: str  # attack or lookalike (the episode's draw)
    attack_level: int | None  # the attacker's difficulty level (adaptive difficulty)
    contrast: dict[str, Any]
    # what the attacker was served for the query (absent: replayed or drawn)
    attack_record: dict[str, Any] | None


@dataclass
class RedteamContext(CritiqueContext):
    attacker: Attacker | None = None
    refine: bool = True  # loop.refine: a refinement and its critique after the first
    # competence/conformity: the learner also answers with a safety instruction
    # in context (contrast); a share of the episodes take a look-alike (benign)
    # prompt, raised to balance_share while competence pairs trail conformity
    # pairs (pair_counts, kept by the orchestrator)
    contrast: bool = False
    guarded_samples: int = 1  # guarded answers drawn per episode (loop.guarded_samples)
    written_refusals: bool = False  # none refused: a written refusal (loop.written_refusals)
    benign_share: float = 0.0
    benign: PromptSource | None = None
    balance_share: float | None = None
    attacker_lookalikes: bool = False  # the attacker writes look-alikes (else: drawn)
    # loop.intent_judge: does a look-alike (with certified_attacks: an attack too)
    # the attacker wrote ask for harm?
    intent_judge: Callable[..., Any] | None = None
    intent_role: str | None = None
    # loop.attack_contrast certified: an attack the attacker rewrote makes contrast
    # pairs only when the intent judge read it as asking for harm
    certified_attacks: bool = False
    # seed replay: a share of the attacks send an attacker seed example as written
    seed_share: float = 0.0
    seeds: PromptSource | None = None


Ctx = Runtime[RedteamContext]


def draws_benign(episode_id: str, share: float) -> bool:
    """Whether this episode takes a look-alike (benign) prompt instead of an
    attack (fixed by its id and the share, so a resumed episode decides the same)."""
    return share > 0 and random.Random(episode_id).random() < share


def lookalike_share(ctx: RedteamContext) -> float:
    """The share of look-alike episodes now: ``benign_share``, or
    ``balance_share`` while the run's competence pairs trail its conformity
    pairs (contrast by design: the trainer should see at least as many)."""
    counts = ctx.pair_counts
    trailing = counts.get("competence", 0) < counts.get("conformity", 0)
    if ctx.balance_share is not None and trailing:
        return max(ctx.benign_share, ctx.balance_share)
    return ctx.benign_share


def replays_seed(episode_id: str, share: float) -> bool:
    """Whether this attack sends a seed example as written instead of the
    attacker's rewrite (fixed by the episode id, independent of draws_benign)."""
    return share > 0 and random.Random(f"{episode_id}:seed").random() < share


@node("attack")
async def attack(state: RedteamState, runtime: Ctx) -> Update:
    """An attack, or (a ``lookalike_share`` of the episodes) a harmless look-alike
    of one; a ``seed_share`` of either is a seed example sent as written, the
    rest the attacker writes in that mode."""
    ctx = runtime.context
    eid = state["episode_id"]
    lookalike = ctx.benign is not None and draws_benign(eid, lookalike_share(ctx))
    mode: Mode = "lookalike" if lookalike else "attack"
    written = ctx.attacker is not None and ctx.attacker_lookalikes
    if lookalike and (not written or replays_seed(eid, ctx.seed_share)):
        drawn = await draw_prompt(state, runtime, ctx.benign)
        category = f"benign:{drawn.update['category']}"
        drawn.update = {**drawn.update, "category": category, "mode": mode}
        return drawn
    if not lookalike and ctx.seeds is not None and replays_seed(eid, ctx.seed_share):
        drawn = await draw_prompt(state, runtime, ctx.seeds)  # from the seed set
        drawn.update = {**drawn.update, "mode": mode}
        return drawn
    binding = ctx.registry.binding("attacker")
    # The learner's version is fixed here, for the whole episode (hot swap rule).
    learner = ctx.registry.acquire("learner", eid)
    assert ctx.attacker is not None, "the attack node needs roles.attacker bound"
    result = await ctx.attacker(binding, ctx.attacker.next_seed(), mode=mode)
    category = f"benign:{result.seed.category}" if lookalike else result.seed.category
    record = result.record()
    if (lookalike or (ctx.certified_attacks and ctx.contrast)) and not record.fallback:
        record = await check_intent(state, runtime, record, result.query)
    update = {
        "category": category,
        "mode": mode,
        "query": result.query,
        "attacker": model_ref(binding).model_dump(),
        "attack_level": result.level,
        "attack_record": record.model_dump(),
        "learner": {**learner.__dict__},
    }
    return traced(
        update,
        binding,
        result.calls,
        category=category,
        output=result.query,
        mode=mode,
        repeats_avoided=result.repeats_avoided,
        learner_version=learner.version,
        level=result.level,
        attempt=result.attempt,
        fallback=result.fallback,
    )


async def check_intent(
    state: RedteamState, runtime: Ctx, record: AttackRecord, query: str
) -> AttackRecord:
    """The intent judge's reading of a query the attacker wrote (a look-alike;
    an attack too with loop.attack_contrast certified), recorded
    on its ``record`` and traced as an ``intent`` event (no judge: unchanged)."""
    ctx = runtime.context
    if ctx.intent_judge is None or ctx.intent_role is None:
        return record
    started = time.perf_counter()
    judge = ctx.registry.binding(ctx.intent_role)
    checked = await ctx.intent_judge(judge, query)
    intent = checked.intent
    trace(
        runtime,
        state,
        "intent",
        judge,
        checked.calls,
        started,
        output=intent.text,
        asks_harm=intent.asks_harm,
        judge_error=intent.judge_error,
    )
    return record.model_copy(update={"intent": intent})


def lookalike_harmless(state: RedteamState, certified_attacks: bool = False) -> bool | None:
    """Whether the episode's query is a harmless look-alike: False for an
    attack, or a look-alike the intent judge read as asking for harm; None when
    the attacker wrote it and nothing read it (not certified either way).
    With ``certified_attacks`` (loop.attack_contrast certified) an attack is
    False only when it is a seed example as written or the intent judge read
    it as asking for harm; otherwise None (a rewrite read as harmless is not
    made a look-alike either: a small judge's "harmless" would reward compliance)."""
    raw = state.get("attack_record")
    record = AttackRecord.model_validate(raw) if raw else None
    asks_harm = None if record is None or record.intent is None else record.intent.asks_harm
    if not (state.get("mode") == "lookalike" or state["category"].startswith("benign:")):
        if not certified_attacks or record is None or record.fallback:
            return False  # certified or not asked; a seed example sent as written
        return False if asks_harm else None
    if record is None or record.fallback:
        return True  # a shipped look-alike, as written
    if asks_harm is None:
        return None
    return not asks_harm


@node("contrast")
async def contrast(state: RedteamState, runtime: Ctx) -> Update:
    """With loop.contrast: the learner answers again with a safety instruction
    in context; the rule judge reads both answers (competence/conformity pairs).
    With loop.written_refusals, a written refusal stands in when no guarded
    answer refused and the plain answer did not either.
    A look-alike the attacker wrote that nothing certified harmless gets none:
    answering it is competence only if it is harmless; with loop.attack_contrast
    certified, neither does an attack it wrote that nothing certified harmful."""
    ctx = runtime.context
    benign = lookalike_harmless(state, ctx.certified_attacks)
    if not ctx.contrast or benign is None:
        return {}
    binding = binding_of(state["learner"])
    outs = await asyncio.gather(
        *(ctx.learner.respond_guarded(binding, state["query"]) for _ in range(ctx.guarded_samples))
    )
    plain_refused = rule_judge(state["answer"]).refused
    readings = [rule_judge(o.text).refused for o in outs]
    kept = pick_guarded(plain_refused, [o.text for o in outs], readings)
    text, refused = outs[kept].text, readings[kept]
    written = ctx.written_refusals and needs_written_refusal(plain_refused, text, refused)
    record = Contrast(
        guarded_answer=text,
        benign=benign,
        plain_refused=plain_refused,
        guarded_refused=refused,
        samples=len(outs),
        guarded_refusals=sum(readings),
        written=written,
        written_refusal=written_refusal(state["episode_id"]) if written else None,
    )
    return traced(
        {"contrast": record.model_dump()},
        binding,
        list(outs),
        output=text,
        benign=record.benign,
        plain_refused=record.plain_refused,
        guarded_refused=record.guarded_refused,
        samples=record.samples,
        guarded_refusals=record.guarded_refusals,
        written_refusal=record.written_refusal,
    )


def uncertified(state: RedteamState, ctx: RedteamContext) -> bool:
    """A query the attacker wrote that nothing certified: a look-alike not read
    as harmless, or (loop.attack_contrast certified) an attack not read as harmful."""
    return lookalike_harmless(state, ctx.certified_attacks) is None


def pick_guarded(plain_refused: bool, texts: list[str], refused: list[bool]) -> int:
    """Which of the guarded samples the episode keeps: the first non-empty one
    the rule judge reads otherwise than the plain answer (the one a pair can
    be made from: a refusal beside a compliance, help beside an over-refusal),
    else the first. With one sample, that one."""
    for i, (text, r) in enumerate(zip(texts, refused, strict=True)):
        if r != plain_refused and text.strip():
            return i
    return 0


def needs_written_refusal(plain_refused: bool, guarded: str, guarded_refused: bool) -> bool:
    """With loop.written_refusals: does a written refusal stand in beside the
    learner's answers? When neither refused: the plain answer did not, and the
    guarded one kept did not either, or was empty (the rule judge reads an empty
    answer as refused, but it makes no pair)."""
    return not plain_refused and not (guarded_refused and guarded.strip())


def after_review(state: RedteamState, runtime: Ctx) -> Literal["refine", "emit"]:
    """Refine (``loop.refine``) unless the critique's verdict could not be read."""
    return after_critique(state) if runtime.context.refine else "emit"


@node("emit")
async def emit(state: RedteamState, runtime: Ctx) -> Update:
    """Publish the episode, its refinement pair and its contrast pairs."""
    c, record = state.get("contrast"), state.get("attack_record")
    episode, pairs = refinement_episode(
        state,
        runtime,
        contrast=Contrast.model_validate(c) if c else None,
        attack_level=state.get("attack_level"),
        attack_record=AttackRecord.model_validate(record) if record else None,
        mode="lookalike" if state.get("mode") == "lookalike" else "attack",
    )
    ctx = runtime.context
    if ctx.contrast and ctx.refine_rule_check and c is None and uncertified(state, ctx):
        # the rule check needs the request's kind: nothing certified it, so the
        # critic's preference alone would decide (docs/training.md)
        pairs = []
    pairs += contrast_pairs(episode)
    return publish(runtime, state, episode, pairs, rounds=rounds_of(state, episode))


# -- the context ----------------------------------------------------------------


def difficulty_controller(cfg: RunConfig) -> DifficultyController | None:
    dc = cfg.loop.attacker_difficulty
    if not (dc.adapt and "attacker" in cfg.roles):
        return None
    return DifficultyController(
        levels=dc.levels,
        start=dc.start_level,
        low=dc.target_low,
        high=dc.target_high,
        window=dc.window,
        min_outcomes=dc.min_outcomes,
    )


def make_attacker(
    cfg: RunConfig, chat: Any, seeds: list[Seed], difficulty: DifficultyController | None
) -> Attacker | None:
    if "attacker" not in cfg.roles:
        return None
    rc = cfg.roles["attacker"]
    return Attacker(
        chat,
        seeds,
        temperature=rc.temperature,
        max_tokens=rc.max_tokens,
        recent_window=cfg.loop.attacker_recent_window,
        rng=random.Random(cfg.loop.seed),
        difficulty=difficulty,
    )


def lookalike_items(
    path: Path | None, seeds: list[Seed], ordinary: bool = False
) -> list[PromptItem]:
    """The harmless prompts drawn as written: a user's file, or the seeds'
    look-alikes (by category) and the shipped benign set; with ``ordinary``
    (loop.ordinary_tasks) the shipped ordinary tasks as well."""
    if path is not None:
        items = load_prompt_set(path)
    else:
        shipped = load_prompt_set(None, "benign_set.jsonl")
        items = [PromptItem(s.category, q) for s in seeds for q in s.lookalikes] + shipped
    return items + (load_prompt_set(None, ORDINARY_SET) if ordinary else [])


ORDINARY_SET = "ordinary_set.jsonl"


Recorder = Callable[[Episode, list[PreferencePair]], None]


def with_difficulty(
    record: Recorder | None, difficulty: DifficultyController | None, log: Any
) -> Recorder | None:
    """The run's recorder, then the attacker's difficulty as each episode lands."""
    if difficulty is None:
        return record

    def on_episode(episode: Episode, pairs: list[PreferencePair]) -> None:
        if record is not None:
            record(episode, pairs)
        if episode.attack_level is not None:
            move = difficulty.record(episode.outcome, episode.attack_level)
            if move:
                log.info("attacker.difficulty", **move.as_dict())

    return on_episode


def context(cfg: RunConfig, core: CoreContext) -> RedteamContext:
    lc = cfg.loop
    difficulty = difficulty_controller(cfg)
    # one seed list: the attacker rewrites from it, and seed replays send it as written
    seeds = load_seeds()
    attacker = make_attacker(cfg, core.chat, seeds, difficulty)
    benign = replays = None
    if attacker is not None and lc.benign_share > 0:
        benign = PromptSource(
            lookalike_items(lc.benign_prompts, seeds, lc.ordinary_tasks),
            str(lc.benign_prompts or "seeds.yaml lookalikes + benign_set.jsonl")
            + (f" + {ORDINARY_SET}" if lc.ordinary_tasks else ""),
            random.Random(lc.seed + 1),
        )
    if attacker is not None and lc.seed_share > 0:
        examples = [PromptItem(s.category, ex) for s in seeds for ex in s.examples]
        replays = PromptSource(examples, "seeds.yaml", random.Random(lc.seed + 2))
    ctx = extend(
        core,
        RedteamContext,
        **critique_settings(cfg, core),
        attacker=attacker,
        refine=lc.refine,
        contrast=lc.contrast,
        guarded_samples=lc.guarded_samples,
        written_refusals=lc.written_refusals,
        balance_share=lc.balance_share,
        attacker_lookalikes=lc.attacker_lookalikes,
        intent_judge=intent_judge_for(cfg, core.chat),
        intent_role=lc.intent_judge,
        benign_share=lc.benign_share if attacker is not None else 0.0,
        benign=benign,
        certified_attacks=lc.attack_contrast == "certified",
        seed_share=lc.seed_share if attacker is not None else 0.0,
        seeds=replays,
    )
    ctx.on_episode = with_difficulty(core.on_episode, difficulty, core.log)
    return ctx


@register_graph("redteam", roles=("attacker", "learner", "critic"), context=context)
def build(checkpointer: Any = None) -> Any:
    g = StateGraph(RedteamState, context_schema=RedteamContext)
    g.add_node("attack", attack)
    g.add_node("respond", respond)
    # with loop.contrast: a guarded second answer (competence/conformity pairs)
    g.add_node("contrast", contrast)
    g.add_node("critique", critique)
    g.add_node("refine", refine)
    g.add_node("critique_refined", critique_refined)
    # A critique the critic was unsure of waits for a person (sparring review).
    g.add_node("review", make_review("critique", "review"))
    g.add_node("review_refined", make_review("refined_critique", "review_refined"))
    g.add_node("emit", emit)
    g.add_edge(START, "attack")
    g.add_edge("attack", "respond")
    g.add_edge("respond", "contrast")
    g.add_edge("contrast", "critique")
    g.add_edge("critique", "review")
    g.add_conditional_edges("review", after_review, ["refine", "emit"])
    g.add_edge("refine", "critique_refined")
    g.add_edge("critique_refined", "review_refined")
    g.add_edge("review_refined", "emit")
    g.add_edge("emit", END)
    return g.compile(checkpointer=checkpointer)


# For LangGraph's own tooling (langgraph.json / `langgraph dev`).
graph = build()
