"""The background trainer: pairs in, immutable learner versions out.

Crash safety, step by step:
  1. pairs are read from the bus and held, NOT acked, until they are trained
     into a version (a restarted trainer gets its pending pairs back);
  2. version N is trained into ``.vN.tmp`` and renamed to ``vN`` atomically,
     with a manifest naming the pairs it was trained on;
  3. the version is published (idempotent id ``learner-vN``), then the pairs
     are acked.
A kill between any two steps repeats at most the unfinished step: partial
``.vN.tmp`` dirs are deleted on start, and pairs already listed in a version's
manifest are acked (and that version re-published) instead of trained again.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import ValidationError

from sparring.bus import ARCHIVE_DIR, Bus, Delivery, make_bus
from sparring.bus.streams import PAIRS, PROMOTIONS, VERSIONS
from sparring.config import ConfigError, RunConfig, TrainerConfig, check_name, load_config
from sparring.schemas import SCHEMA_VERSION, PreferencePair, VersionPublished, newer_schema
from sparring.serving.loaders import ADAPTER_SUBDIR
from sparring.serving.models import COMPLETE_MARKER, resolve_model_path
from sparring.serving.registry import POINTER_KEY
from sparring.tracing import process_logger
from sparring.training.dpo import TrainingDiverged, pair_problem, train_version
from sparring.training.ranks import Ranks, follow

STREAM = PAIRS.name
GROUP = "trainer"  # the learner's trainers' consumer group on the pairs stream


def group(role: str) -> str:
    """The consumer group of ``role``'s trainers: each trained role reads every
    pair and keeps its own (the learner's keeps the name it always had)."""
    return GROUP if role == "learner" else f"{GROUP}-{role}"


MANIFEST = "manifest.json"
LOCK_FILE = ".trainer.lock"  # in versions/<role>/: held by the one trainer at work
# The end of a run's final version (trainer.final_version), in versions/<role>/:
# the orchestrator asks when its episode budget ends; the trainer answers with
# the version it trained ({"version": N}, or null: nothing left to train).
FINAL_REQUEST = ".final-requested"
FINAL_DONE = ".final-done"
# Held pairs stay pending for as long as a version takes to collect and train;
# another trainer must not claim them in the meantime.
CLAIM_AFTER_S = 3600.0
# pairs read from the bus at a time when no version is trained mid-run
ONE_ROUND_READ = 256


def version_dir(versions_dir: Path, role: str, n: int) -> Path:
    return versions_dir / role / f"v{n}"


def complete_versions(versions_dir: Path, role: str) -> dict[int, VersionPublished]:
    """Every finished version of ``role`` on disk, by number (v0, the base, has none)."""
    found = {}
    for d in (versions_dir / role).glob("v*"):
        if d.name[1:].isdigit() and (d / COMPLETE_MARKER).is_file():
            found[int(d.name[1:])] = VersionPublished.model_validate_json(
                (d / MANIFEST).read_text()
            )
    return dict(sorted(found.items()))


def request_final(versions_dir: Path, role: str) -> None:
    """Ask the trainer for the run's final version (the episode budget ended)."""
    folder = versions_dir / role
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FINAL_DONE).unlink(missing_ok=True)
    (folder / FINAL_REQUEST).write_text("requested\n")


def clear_final(versions_dir: Path, role: str) -> None:
    """Forget an earlier request and its answer (a resumed run has a new budget)."""
    for name in (FINAL_REQUEST, FINAL_DONE):
        (versions_dir / role / name).unlink(missing_ok=True)


def final_answer(versions_dir: Path, role: str) -> dict[str, int | None] | None:
    """The trainer's answer to the request ({"version": N or None}); None: not yet."""
    try:
        return dict(json.loads((versions_dir / role / FINAL_DONE).read_text()))
    except (OSError, ValueError):
        return None


def trainer_running(versions_dir: Path, role: str) -> bool:
    """Whether a trainer holds ``role``'s lock (one started elsewhere too, on a
    shared folder): the lock is free, and taken and let go at once, otherwise."""
    import fcntl

    path = versions_dir / role / LOCK_FILE
    if not path.is_file():
        return False
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def clear_partial(versions_dir: Path, role: str) -> list[Path]:
    partial = list((versions_dir / role).glob(".v*.tmp"))
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return partial


class DiskFull(RuntimeError):
    """No space left to write a version; its partial folder is already deleted."""


def _no_space(err: BaseException) -> bool:
    # safetensors reports it as its own error, not as an OSError
    return (isinstance(err, OSError) and err.errno == errno.ENOSPC) or (
        "No space left on device" in str(err)
    )


@contextlib.contextmanager
def disk_full_stops(tmp: Path, n: int, log: Any) -> Iterator[None]:
    """Turn a full disk while writing version ``n`` into one clear error: the
    partial ``tmp`` folder is deleted (nothing half-written stays, and its space
    is freed) and :class:`DiskFull` is raised; the pairs stay held, unacked."""
    try:
        yield
    except Exception as err:
        if not _no_space(err):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(tmp.parent).free // 2**20
        message = (
            f"no space left on the device of {tmp.parent} while writing version {n} "
            f"({free} MiB free now, its partial folder deleted): free some space there; "
            "its pairs stay on the bus and a restarted trainer trains them"
        )
        log.error("trainer.disk_full", version=n, error=message)
        raise DiskFull(message) from None


class Trainer:
    def __init__(
        self,
        bus: Bus,
        base_model: Path | str,
        versions_dir: Path,
        cfg: TrainerConfig,
        *,
        role: str = "learner",
        consumer: str = "trainer-1",
        log: Any = None,
        ranks: Ranks | None = None,
        carried: list[PreferencePair] | None = None,
    ) -> None:
        """``carried``: pairs of earlier runs (trainer.pairs_from) that every
        rebuilt version trains on too."""
        self.ranks = ranks or Ranks()
        self.carried = carried or []
        self.bus = bus
        self.base_model = base_model
        self.versions_dir = versions_dir
        cfg = cfg.for_role(role)  # trainer.per_role
        # only the learner is served both with and without a system prompt, and
        # only its epochs can be chosen on refusals (the validation set)
        self.cfg = (
            cfg
            if role == "learner"
            else cfg.model_copy(update={"contexts": ["served"], "select_epoch": False})
        )
        self.role = role
        self.group = group(role)
        self.consumer = consumer
        self.log = log or process_logger("trainer")
        self.batch: list[tuple[Delivery, PreferencePair]] = []
        # refused pairs (never trained), held unacked until the next version
        # records them, so a killed trainer counts them again rather than not at all
        self.refused: list[tuple[Delivery, str]] = []
        # pairs written by a newer sparring (a higher schema_version): left
        # unacked for a trainer that can read them, never dropped
        self.deferred: set[str] = set()
        self._tokenizer: Any = None
        # trainer.coevolution: alternate: the turn waited for, since when, and
        # the one waited out (trained without it after turn_wait_minutes)
        self._waiting: str | None = None
        self._waiting_since = 0.0
        self._waited_out: str | None = None

    @property
    def tokenizer(self) -> Any:
        """The served model's tokenizer: its chat template renders every pair."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.base_model))
        return self._tokenizer

    def check(self, d: Delivery, pair: PreferencePair) -> bool:
        """Hold a trainable pair; refuse (log and count) any other."""
        problem = pair_problem(pair, self.tokenizer)
        if problem is None:
            self.batch.append((d, pair))
            return True
        self.log.warning(
            "trainer.refused_pair",
            pair_id=pair.pair_id,
            kind=pair.kind,
            episode_id=pair.episode_id,
            reason=problem,
        )
        self.refused.append((d, problem))
        return False

    def publish(self, manifest: VersionPublished) -> bool:
        return VERSIONS.publish(self.bus, f"{self.role}-v{manifest.version}", manifest)

    def recover(self) -> None:
        """Finish what a killed predecessor left: drop partial dirs, re-publish versions."""
        for p in clear_partial(self.versions_dir, self.role):
            self.log.warning("trainer.recovered", removed_partial=str(p))
        for manifest in complete_versions(self.versions_dir, self.role).values():
            if self.publish(manifest):  # False (a no-op) when already on the bus
                self.log.warning("trainer.recovered", republished=manifest.version)

    def poll(self) -> int:
        """Add newly delivered pairs to the batch; returns how many arrived."""
        held = {d.msg_id for d, _ in self.batch} | {d.msg_id for d, _ in self.refused}
        held |= self.deferred
        # The bus hands this consumer's pending (held) pairs back first, so ask
        # for those and a whole version's worth more to get past them to new ones.
        delivered = self.bus.read(
            STREAM,
            self.group,
            self.consumer,
            count=len(held) + self.lookahead,
            claim_after_s=CLAIM_AFTER_S,
        )
        fresh = [d for d in delivered if d.msg_id not in held]
        others: list[str] = []
        for d in fresh:
            if written_by := newer_schema(d.payload):
                self.deferred.add(d.msg_id)
                self.log.warning(
                    "trainer.newer_schema",
                    msg_id=d.msg_id,
                    schema_version=written_by,
                    understood=SCHEMA_VERSION,
                    action="left unacked for a newer trainer",
                )
                continue
            try:
                pair = PreferencePair.model_validate(d.payload)
            except ValidationError as err:
                # Poison: retrying cannot fix it, and it must not block training;
                # refused like any untrainable pair (counted, acked with a version).
                self.log.error(
                    "trainer.bad_pair", msg_id=d.msg_id, poison=True, error=str(err)[:500]
                )
                first = err.errors()[0]
                where = ".".join(map(str, first["loc"])) or "payload"
                self.refused.append((d, f"not a valid pair ({where}: {first['msg']})"))
                continue
            if pair.role != self.role:
                others.append(d.msg_id)  # another role's trainers read it in their group
                continue
            self.check(d, pair)
        if others:
            self.bus.ack(STREAM, self.group, others)
        return len(fresh)

    def drop_trained(self) -> None:
        """Ack held pairs a version was already trained on (a kill after the rename
        but before the ack) and re-publish that version instead of training again."""
        trained = {
            pid: m
            for m in complete_versions(self.versions_dir, self.role).values()
            for pid in m.pair_ids
        }
        done = [(d, p) for d, p in self.batch if p.pair_id in trained]
        if not done:
            return
        for manifest in {trained[p.pair_id].version: trained[p.pair_id] for _, p in done}.values():
            self.publish(manifest)
        self.bus.ack(STREAM, self.group, [d.msg_id for d, _ in done])
        self.batch = [(d, p) for d, p in self.batch if p.pair_id not in trained]
        self.log.warning("trainer.recovered", acked_already_trained=len(done))

    @property
    def lookahead(self) -> int:
        """Pairs held before choosing: alternate looks at two versions' worth."""
        k = self.cfg.pairs_per_version or ONE_ROUND_READ
        return 2 * k if self.cfg.schedule == "alternate" else k

    def next_version(self) -> int:
        return max(complete_versions(self.versions_dir, self.role), default=0) + 1

    def ready(self) -> bool:
        """Enough pairs for the next version: pairs_per_version (mix); for
        alternate, that many of the phase's kind, or two versions' worth; and,
        with trainer.coevolution: alternate, this role's turn (:meth:`waits_for`),
        or ``turn_wait_minutes`` waited for it with the pairs ready."""
        k = self.cfg.pairs_per_version
        if k is None:
            return False  # one round: only the final version
        if self.cfg.schedule == "mix":
            enough = len(self.mixed(k)[0]) >= k
        elif len(self.batch) >= self.lookahead:
            enough = len(self.batch) >= k
        else:
            phase = "conformity" if self.next_version() % 2 else "competence"
            enough = sum(p.kind == phase for _, p in self.batch) >= k
        return enough and self._turn()

    def _turn(self) -> bool:
        why = self.waits_for()
        if why is None:
            self._waiting = self._waited_out = None
            return True
        now = time.monotonic()
        if why != self._waiting:
            self._waiting, self._waiting_since = why, now
            self.log.info("trainer.waiting", version=self.next_version(), until=why)
        if now - self._waiting_since < self.cfg.turn_wait_minutes * 60:
            return False
        if why != self._waited_out:  # the other role has no version coming: go on
            self._waited_out = why
            self.log.warning(
                "trainer.turn_waited_out",
                version=self.next_version(),
                until=why,
                waited_minutes=self.cfg.turn_wait_minutes,
            )
        return True

    def coevolves(self) -> bool:
        return len(self.cfg.roles) > 1 and self.role in self.cfg.roles

    def waits_for(self) -> str | None:
        """With trainer.coevolution: alternate, what round n's version of this
        role waits for (None: its turn): version n of each role listed before it
        in trainer.roles, version n-1 of each listed after it, decided (serving,
        or rejected by its gate)."""
        if self.cfg.coevolution != "alternate" or not self.coevolves():
            return None
        n, roles = self.next_version(), self.cfg.roles
        mine = roles.index(self.role)
        for i, other in enumerate(roles):
            need = n if i < mine else n - 1
            if other != self.role and need > 0 and self.decided(other) < need:
                return f"{other} v{need} gated"
        return None

    def decided(self, role: str) -> int:
        """The newest version of ``role`` the gate has decided on: the one
        serving, or a later one it rejected (0: none)."""
        ptr = self.bus.get_pointer(POINTER_KEY.format(role=role))
        return max([int(ptr["version"]) if ptr else 0, *self.rejected(role)])

    def stage(self, n: int, final: bool) -> dict[str, Any] | None:
        """What the version record says of the schedule that made it."""
        if not self.coevolves():
            return None
        against = {}
        for other in self.cfg.roles:
            if other != self.role:
                ptr = self.bus.get_pointer(POINTER_KEY.format(role=other))
                against[other] = int(ptr["version"]) if ptr else 0
        return {
            "schedule": self.cfg.coevolution,
            "round": n,
            "against": against,
            "final": final,
            "waited_out": self._waited_out,  # the other role's turn it did not wait for
        }

    def trained_kinds(self) -> Counter[str]:
        """The pairs of each kind the run's versions were trained on so far
        (rejected ones too), and trainer.pairs_from's."""
        kinds = Counter(str(p.kind) for p in self.carried)
        for manifest in complete_versions(self.versions_dir, self.role).values():
            kinds.update(manifest.pair_kinds)
        return kinds

    def mixed(
        self, k: int
    ) -> tuple[list[tuple[Delivery, PreferencePair]], list[tuple[Delivery, PreferencePair]]]:
        """Up to ``k`` held pairs, in arrival order, and the conformity pairs held
        back: with ``balance_pairs``, a conformity pair is taken only while the
        run's competence pairs (trained, and taken before it or with it)
        outnumber its conformity pairs; one held back waits for a competence
        pair that comes later."""
        if not self.cfg.balance_pairs:
            return self.batch[:k], []
        trained = self.trained_kinds()
        room = trained["competence"] - trained["conformity"]
        take: list[tuple[Delivery, PreferencePair]] = []
        waiting: list[tuple[Delivery, PreferencePair]] = []
        for x in self.batch:
            if len(take) >= k:
                break
            if x[1].kind != "conformity":
                take.append(x)
                room += x[1].kind == "competence"
            elif room > 0:
                take.append(x)
                room -= 1
            else:
                waiting.append(x)
            while room > 0 and waiting and len(take) < k:
                take.append(waiting.pop(0))
                room -= 1
        order = {id(x): i for i, x in enumerate(self.batch)}
        # with room left, the first ``room`` waiting were cut by k, not held back
        return sorted(take, key=lambda x: order[id(x)]), waiting[max(room, 0) :]

    def select(
        self, n: int, take_all: bool = False
    ) -> tuple[str | None, list[tuple[Delivery, PreferencePair]]]:
        """The pairs version ``n`` trains on. mix: the first pairs_per_version in
        arrival order (with ``balance_pairs``, conformity pairs past the run's
        competence pairs wait: :meth:`mixed`). alternate: odd versions take
        conformity pairs first, even ones competence pairs; other kinds, then the
        opposite phase's, fill up (a phase short of its own kind never stalls
        training). ``take_all``: every held pair (the run's final version)."""
        phase, take, _ = self.selection(n, take_all)
        return phase, take

    def selection(
        self, n: int, take_all: bool = False
    ) -> tuple[
        str | None, list[tuple[Delivery, PreferencePair]], list[tuple[Delivery, PreferencePair]]
    ]:
        """:meth:`select`'s phase and pairs, and the conformity pairs it held back."""
        k = len(self.batch) if take_all else (self.cfg.pairs_per_version or len(self.batch))
        if self.cfg.schedule == "mix":
            return None, *self.mixed(k)
        phase, other = ("conformity", "competence") if n % 2 else ("competence", "conformity")
        rank = {phase: 0, other: 2}
        ordered = sorted(self.batch, key=lambda x: rank.get(x[1].kind, 1))  # stable
        return phase, ordered[:k], []

    def replay(
        self, n: int, fresh: list[PreferencePair], done: dict[int, VersionPublished]
    ) -> list[PreferencePair]:
        """Up to ``cfg.replay`` pairs of ``cfg.replay_kinds`` that earlier versions
        (rejected ones too: their lesson was dropped with them) were trained on,
        drawn at random (seeded by ``n``): uniformly, or with ``replay_balance``
        each from the kind that has the fewest pairs in the version so far.
        ``done``: the finished versions, as :func:`complete_versions` reads them."""
        if self.cfg.replay == 0:
            return []
        pool: dict[str, list[PreferencePair]] = {k: [] for k in self.cfg.replay_kinds}
        for p in self.earlier(done):
            if p.kind in pool:
                pool[str(p.kind)].append(p)
        rng = random.Random(n)
        if not self.cfg.replay_balance:
            everything = [p for kind in pool for p in pool[kind]]
            return rng.sample(everything, min(self.cfg.replay, len(everything)))
        for kind in pool:
            rng.shuffle(pool[kind])
        have = Counter(str(p.kind) for p in fresh)
        out: list[PreferencePair] = []
        while len(out) < self.cfg.replay and (kinds := [k for k in pool if pool[k]]):
            kind = min(kinds, key=lambda k: have[k])
            out.append(pool[kind].pop())
            have[kind] += 1
        return out

    def earlier(self, done: dict[int, VersionPublished]) -> list[PreferencePair]:
        """Every trainable pair the finished versions were trained on, in the
        order they came (lineage rebuild trains each version on all of them)."""
        ids = {pid for m in done.values() for pid in m.pair_ids}
        out = []
        for d in self.bus.history(STREAM):
            if d.payload.get("pair_id") in ids:
                ids.discard(d.payload["pair_id"])
                p = PreferencePair.model_validate(d.payload)
                if pair_problem(p, self.tokenizer) is None:
                    out.append(p)
        return out

    def final_requested(self) -> bool:
        folder = self.versions_dir / self.role
        return (folder / FINAL_REQUEST).is_file() and not (folder / FINAL_DONE).is_file()

    def answer_final(self, manifest: VersionPublished | None) -> None:
        version = None if manifest is None else manifest.version
        (self.versions_dir / self.role / FINAL_DONE).write_text(json.dumps({"version": version}))
        self.log.info("trainer.final_version", version=version)

    def rejected(self, role: str | None = None) -> set[int]:
        """Versions of ``role`` (default: this trainer's) its gate rejected (the
        bus's ``promotions`` stream)."""
        return {
            int(d.payload["version"])
            for d in self.bus.history(PROMOTIONS.name)
            if d.payload.get("role") == (role or self.role) and not d.payload.get("promoted")
        }

    def lineage(
        self, latest: int, done: dict[int, VersionPublished]
    ) -> tuple[Path | str, Path | None, Literal["base", "previous"]]:
        """What the next version trains from, ``latest`` being the newest version
        not rejected (0: none): (model weights, the adapter to train on or None
        for a new one, what the new version's adapter is relative to).

        continue (or publish: adapter): the base model carrying ``latest``'s
        adapter, trained on further. fresh: a new LoRA on ``latest``'s merged
        weights. A run whose earlier versions were written fresh (an older
        sparring) stays fresh: their adapters are not relative to the base."""
        if not latest or self.cfg.lineage == "rebuild":
            return self.base_model, None, "base" if self._continues else "previous"
        previous = version_dir(self.versions_dir, self.role, latest)
        if self.cfg.publish == "adapter" or (
            self.cfg.lineage == "continue" and done[latest].adapter_base == "base"
        ):
            return self.base_model, previous / ADAPTER_SUBDIR, "base"
        if self.cfg.lineage == "continue":
            self.log.warning(
                "trainer.lineage_fresh",
                version=latest,
                reason="this version's adapter is relative to the version before it, "
                "not to the base model (written by an older sparring): new LoRAs are "
                "stacked on merged versions for the rest of this run",
            )
        return previous, None, "previous"

    @property
    def _continues(self) -> bool:
        return self.cfg.publish == "adapter" or self.cfg.lineage in ("continue", "rebuild")

    def train_next(self, take_all: bool = False) -> VersionPublished | None:
        """Train and publish the next version (``take_all``: on every held pair
        it may take); None when its training diverged (its pairs are then
        refused, counted in the next version's record) or it has no pair to
        train (all held back: balance_pairs)."""
        done = complete_versions(self.versions_dir, self.role)
        n = max(done, default=0) + 1
        phase, take, waiting = self.selection(n, take_all)
        held_back = len(waiting)  # conformity pairs that wait for competence pairs
        stage = self.stage(n, final=take_all)
        taken = {id(x) for x in take}
        self.batch = [x for x in self.batch if id(x) not in taken]
        if held_back:
            self.log.warning(
                "trainer.held_back",
                version=n if take else None,  # None: no version, every pair held back
                pairs=held_back,
                reason="the run's competence pairs trail its conformity pairs "
                "(trainer.balance_pairs): these wait unacked on the bus for a version "
                "with more competence pairs",
            )
        if not take:
            return None
        pairs = [p for _, p in take]
        kinds: dict[str, int] = dict(Counter(str(p.kind) for p in pairs))
        rebuild = self.cfg.lineage == "rebuild"
        # rebuild: the earlier pairs go in again, as replay does, but all of them
        # (and those of earlier runs, trainer.pairs_from)
        replayed = self.carried + self.earlier(done) if rebuild else self.replay(n, pairs, done)
        # Build on the newest version the canary gate did not reject (one that
        # is not decided yet counts as good: the gate decides within a minute).
        rejected = self.rejected()
        latest = 0 if rebuild else max((v for v in done if v not in rejected), default=0)
        base, adapter_from, adapter_base = self.lineage(latest, done)
        final = version_dir(self.versions_dir, self.role, n)
        tmp = final.with_name(f".v{n}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.log.info(
            "train.start",
            version=n,
            base_version=latest,
            pairs=len(pairs),
            carried=len(self.carried) if rebuild else 0,
            pair_kinds=kinds,
            phase=phase,
            publish=self.cfg.publish,
            adapter_base=adapter_base,
            replayed=dict(Counter(str(p.kind) for p in replayed)),
        )
        trained = pairs + replayed
        # Other ranks (accelerate launch) train the same step; only this one writes.
        self.ranks.send(
            (
                "train",
                str(base),
                [p.model_dump(mode="json") for p in trained],
                str(tmp),
                self.cfg.model_dump(mode="json"),
                n,
                str(adapter_from) if adapter_from else None,
            )
        )
        try:
            with disk_full_stops(tmp, n, self.log):
                result = train_version(
                    base,
                    trained,
                    tmp,
                    self.cfg,
                    seed=n,
                    adapter_from=adapter_from,
                    report=lambda event, **fields: self.log.info(event, version=n, **fields),
                )
        except TrainingDiverged as err:
            # Garbage weights never serve; retrying the same pairs would diverge
            # again, so they are refused (logged, counted, acked with the next version).
            shutil.rmtree(tmp, ignore_errors=True)
            self.log.error("train.diverged", version=n, pairs=len(pairs), error=str(err))
            self.refused += [(d, "training diverged (loss or weights not finite)") for d, _ in take]
            return None
        self.log.info(
            "train.done",
            version=n,
            loss=result.loss,
            steps=result.steps,
            planned_steps=result.planned_steps,
            seconds=round(result.seconds, 2),
            reward_margin=result.reward_margin,
            learning_rate=result.last_learning_rate,
            device=result.device,
            bf16=result.bf16,
            checkpointing=result.checkpointing,
            step=result.step,
            selection=list(result.selection),
            selection_start=result.selection_start,
        )
        refused, self.refused = self.refused, []
        manifest = VersionPublished(
            role=self.role,
            version=n,
            path=str(final.resolve()),
            base_version=latest,
            pair_ids=[p.pair_id for p in pairs],
            train_loss=result.loss,
            train_seconds=result.seconds,
            reward_margin=result.reward_margin,
            reward_accuracy=result.reward_accuracy,
            step=result.step,
            selection=list(result.selection),
            selection_start=result.selection_start,
            train_steps=result.steps,
            planned_steps=result.planned_steps,
            pair_kinds=kinds,
            phase=phase,
            replay_ids=[p.pair_id for p in replayed],
            refused=dict(Counter(why for _, why in refused)),
            held_back=held_back,
            adapter_base=adapter_base,
            stage=stage,
        )
        with disk_full_stops(tmp, n, self.log):
            (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2))
            (tmp / COMPLETE_MARKER).write_text("ok\n")
        tmp.rename(final)
        self.publish(manifest)
        self.bus.ack(
            STREAM, self.group, [d.msg_id for d, _ in take] + [d.msg_id for d, _ in refused]
        )
        self.log.info("version.published", version=n, path=manifest.path, pairs=len(pairs))
        return manifest


def exclusive(path: Path, stop: threading.Event, log: Any) -> IO[str] | None:
    """Hold ``path``'s lock: one trainer per versions folder and role. Two would
    both train version N on the same pairs in the same ``.vN.tmp`` (each deleting
    the other's), e.g. the trainer of an orchestrator that was SIGKILLed (it
    runs on, orphaned) and the one its restart starts. Waits while another holds
    it; the kernel releases it when its holder dies, however it dies. None when
    ``stop`` was set while waiting."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a")
    waiting = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if waiting:
                log.info("trainer.lock_taken", lock=str(path))
            return handle
        except BlockingIOError:
            if not waiting:
                log.warning(
                    "trainer.waiting",
                    lock=str(path),
                    reason="another trainer works on this versions folder; "
                    "this one takes over when it exits",
                )
                waiting = True
            if stop.wait(1.0):
                handle.close()
                return None


def watch_parent(stop: threading.Event, poll_s: float = 1.0) -> None:
    """Set ``stop`` once the process that started this one has exited (its
    children are then handed to init): a trainer `sparring run` started must
    not outlive a SIGKILLed orchestrator and train beside its successor's."""
    parent = os.getppid()

    def watch() -> None:
        while not stop.wait(poll_s):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_trainer(
    *,
    bus: Bus,
    base_model: Path | str,
    versions_dir: Path,
    cfg: TrainerConfig,
    role: str = "learner",
    consumer: str = "trainer-1",
    max_versions: int | None = None,
    stop: threading.Event | None = None,
    on_version: Callable[[VersionPublished], None] | None = None,
    log: Any = None,
    ranks: Ranks | None = None,
    carried: list[PreferencePair] | None = None,
) -> list[VersionPublished]:
    """Train a version every ``cfg.pairs_per_version`` pairs until ``stop`` is set
    or ``max_versions`` versions were published; returns those published."""
    ranks = ranks or Ranks()
    trainer = Trainer(
        bus,
        base_model,
        versions_dir,
        cfg,
        role=role,
        consumer=consumer,
        log=log,
        ranks=ranks,
        carried=carried,
    )
    stop = stop or threading.Event()
    trainer.log.info(
        "trainer.started",
        role=role,
        consumer=consumer,
        pairs_per_version=trainer.cfg.pairs_per_version,
    )
    lock = exclusive(versions_dir / role / LOCK_FILE, stop, trainer.log)
    if lock is None:  # stopped while another trainer held the folder
        ranks.send(("stop",))
        trainer.log.info("trainer.stopped", published=[])
        return []
    trainer.recover()
    published: list[VersionPublished] = []
    try:
        while not stop.is_set() and (max_versions is None or len(published) < max_versions):
            if trainer.poll():
                trainer.drop_trained()
            if not trainer.ready() and trainer.final_requested():
                # the run's budget ended: pairs published before the request are
                # on the bus, so read them all, then train on whatever is held
                while trainer.poll():
                    trainer.drop_trained()
                manifest = trainer.train_next(take_all=True) if trainer.batch else None
                trainer.answer_final(manifest)
                if manifest is not None:
                    published.append(manifest)
                    if on_version:
                        on_version(manifest)
                continue
            if not trainer.ready():
                ranks.send(("wait",))
                stop.wait(cfg.poll_s)
                continue
            trainer.log.info("trainer.batch_ready", pairs=len(trainer.batch))
            manifest = trainer.train_next()
            if manifest is None:
                continue
            published.append(manifest)
            if on_version:
                on_version(manifest)
    finally:
        ranks.send(("stop",))
        lock.close()  # releases the lock
    trainer.log.info("trainer.stopped", published=[m.version for m in published])
    return published


def pairs_from_problem(runs_dir: Path, run_id: str, this_run: str | None) -> str | None:
    """Why ``run_id`` cannot be one of ``trainer.pairs_from`` for the run
    ``this_run`` under ``runs_dir`` (None: it can)."""
    if run_id == this_run:
        return (
            f"trainer.pairs_from names {run_id!r}, the run itself: its own pairs train "
            "anyway (and would count twice); name earlier runs only"
        )
    if not (runs_dir / run_id / "config.yaml").is_file():
        return (
            f"trainer.pairs_from names {run_id!r}, but {runs_dir / run_id} holds no run "
            "(no config.yaml): name a run id under runs_dir"
        )
    return None


def check_pairs_from(cfg: TrainerConfig, run_dir: Path, here: bool = True) -> None:
    """Before a run starts: each role's ``trainer.pairs_from`` names another run,
    one that exists beside ``run_dir`` where ``here`` (the trainer runs on this
    machine); a ConfigError otherwise."""
    for role in cfg.roles:
        for run_id in cfg.for_role(role).pairs_from:
            why = pairs_from_problem(run_dir.parent, run_id, run_dir.name)
            if why and (here or run_id == run_dir.name):
                raise ConfigError(why)


def carried_pairs(
    runs_dir: Path,
    run_ids: list[str],
    tokenizer: Any,
    role: str = "learner",
    this_run: str | None = None,
) -> list[PreferencePair]:
    """``role``'s trainable pairs of finished runs (``trainer.pairs_from``), each
    run's bus opened as that run configured it; a missing run, or ``this_run``
    itself, is a ConfigError that names it."""
    out: list[PreferencePair] = []
    seen: set[str] = set()
    for run_id in run_ids:
        run_dir = runs_dir / run_id
        if why := pairs_from_problem(runs_dir, run_id, this_run):
            raise ConfigError(why)
        cfg = load_config(run_dir / "config.yaml")
        bus = make_bus(
            cfg.bus.redis_url,
            cfg.bus.sqlite_path or run_dir / "bus.sqlite",
            namespace=run_id,
            archive_dir=run_dir / ARCHIVE_DIR,
        )
        try:
            for d in bus.history(STREAM):
                pair = PreferencePair.model_validate(d.payload)
                fresh = pair.pair_id not in seen and pair.role == role
                if fresh and pair_problem(pair, tokenizer) is None:
                    seen.add(pair.pair_id)
                    out.append(pair)
        finally:
            bus.close()
    return out


def learner_base(cfg: RunConfig, role: str = "learner") -> Path | str:
    """``role``'s base weights: a local folder, or a hub id (GPU boxes)."""
    src = cfg.models[cfg.roles[role].model]
    if src.hub_id is not None:
        return src.hub_id
    return resolve_model_path(src.builtin, src.path)


def _name_arg(value: str) -> str:
    """--consumer names the trainer on the bus and in files: a plain name."""
    try:
        return check_name(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{value!r} {err}") from None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="sparring train", description=__doc__)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--max-versions", type=int, default=None)
    ap.add_argument("--consumer", default="trainer-1", type=_name_arg)
    ap.add_argument(
        "--role",
        default="learner",
        type=_name_arg,
        help="the role to train, one of the config's trainer.roles (default: learner)",
    )
    ap.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop (as on SIGTERM) once the process that started this one "
        "exits; `sparring run` starts its trainer so",
    )
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        # one line for the console, and an error event in trainer.log that the
        # run's supervisor repeats when it restarts this trainer or gives up
        process_logger("trainer").error("trainer.config_error", error=str(err))
        raise SystemExit(f"sparring train: {err}") from None
    if args.role not in cfg.trainer.roles:
        ap.error(
            f"--role {args.role}: the config's trainer.roles is {cfg.trainer.roles}; "
            "name one of them (or add it there)"
        )
    ranks = Ranks.from_env()
    if not ranks.main:
        # Another process of `accelerate launch`: train what rank 0 hands out.
        try:
            follow(ranks, process_logger("trainer"))
        finally:
            ranks.close()
        return
    stop = threading.Event()
    # SIGTERM: finish the current step and exit; held pairs stay pending on the bus.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.exit_with_parent:
        watch_parent(stop)
    bus = make_bus(
        cfg.bus.redis_url,
        cfg.bus.sqlite_path or args.run_dir / "bus.sqlite",
        namespace=args.run_dir.name,
        keep=cfg.bus.redis_keep,
        archive_dir=args.run_dir / ARCHIVE_DIR,
    )
    try:
        base = learner_base(cfg, args.role)
        carried = []
        if pairs_from := cfg.trainer.for_role(args.role).pairs_from:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(base))
            carried = carried_pairs(
                args.run_dir.parent, pairs_from, tokenizer, args.role, this_run=args.run_dir.name
            )
        run_trainer(
            bus=bus,
            base_model=base,
            versions_dir=args.run_dir / "versions",
            cfg=cfg.trainer,
            role=args.role,
            consumer=args.consumer,
            max_versions=args.max_versions,
            stop=stop,
            ranks=ranks,
            carried=carried,
        )
    except DiskFull as err:
        # logged as trainer.disk_full; the one line, not a traceback, for the console
        raise SystemExit(f"sparring train: {err}") from None
    except ConfigError as err:  # trainer.pairs_from: as a config file's error, above
        process_logger("trainer").error("trainer.config_error", error=str(err))
        raise SystemExit(f"sparring train: {err}") from None
    finally:
        bus.close()
        ranks.close()


if __name__ == "__main__":
    main()
