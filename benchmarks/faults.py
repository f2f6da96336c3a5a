"""Fault suite: SIGKILL the trainer, an orchestrator and redis-server during a
real loop, stop the learner's engine, fill the disk; count what was lost or
done twice.

    python benchmarks/faults.py --out benchmarks/results/faults.json
    python benchmarks/faults.py --n 2 --only trainer        # a quick look

Every scenario runs ``python -m sparring run`` as a subprocess on a Redis bus
(a ``redis-server`` this script starts with ``--appendonly yes`` in a temporary
directory), the tiny random model as attacker and learner and the bundled
SmolLM2 as critic (a random critic never writes a readable verdict, so it
would never yield a pair), on two ``transformers serve`` engines this script
starts. Human review is on (``loop.review_below_confidence`` and judge errors),
and a reviewer thread here answers every request through the review API, so
paused episodes and their reviews go through the faults too.

Faults, at seeded random times, N of each:

* ``trainer``: SIGKILL the trainer process (the orchestrator restarts it). An
  orchestrator gives up after 3 trainer deaths (``MAX_TRAINER_RESTARTS``), so
  at most 3 kills fall in one run; N kills take several runs ("legs").
* ``orchestrator``: SIGKILL the ``sparring run`` process alone (as an OOM kill
  would) and start it again at once with the same ``--run-id``.
* ``redis``: SIGKILL ``redis-server``, start it again on the same port and
  directory (it reloads its append-only file).
* ``engine``: SIGKILL the learner's engine, start it again a few seconds later
  on the same port; episodes caught by the outage must be retried, not dropped.
* ``disk``: the run directory on a small tmpfs that fills up while a version
  is written; the run must stop with a clear error and leave nothing
  half-written, and, once space is freed, resume with ``--run-id`` and lose
  nothing.

What is counted, after each run has finished (from the bus, the version
folders, the trainer log and the trace):

* episodes lost: tasks acked without an episode on the ``episodes`` stream
  (gave up after ``loop.episode_attempts``, or dropped); unacked tasks are
  "left" (a restart resumes them), not lost.
* pairs lost: pairs on the bus neither in a version's ``pair_ids``, nor
  refused by the trainer (logged), nor still unacked for the trainer.
* pairs trained twice: pair ids in the ``pair_ids`` of two versions.
* versions published twice: a version number on the ``versions`` stream more
  than once, or published with other pairs than its folder's manifest, or
  trained to the end ("version.published") by two trainers.
* reviews lost: a person's review whose episode finished without it, or that
  was acked while its episode never finished.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sparring.config import EngineConfig
from sparring.process import free_port
from sparring.review import submit
from sparring.schemas import HumanReview
from sparring.serving.engine import EngineProcess
from sparring.serving.models import COMPLETE_MARKER, build_tiny_model, cache_dir, pull_smollm2

TARGETS = ("trainer", "orchestrator", "redis", "engine", "disk")
MAX_TRAINER_RESTARTS = 3  # sparring.runner's; one run survives this many trainer deaths
TRAINING_WAIT_S = 90.0  # a kill aimed at a training step waits this long for one
FINISH_AFTER_DEADLINE_S = 600.0  # a leg stopped at the deadline then runs to its end
REPO = Path(__file__).resolve().parents[1]
CONSUMER = "local"  # the orchestrator's consumer name (sparring run's default)
console = Console(stderr=True)


def become_subreaper() -> None:
    """Orphans of the processes started here (a killed orchestrator's trainer)
    become this process's children, so they can be found and stopped."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def processes_naming(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (a temporary path of this script)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return [p for p in found if p != os.getpid()]


# Children this script started itself (orchestrators, redis-server, engines):
# their Popen collects them. Were reap() to collect one first, Popen.poll()
# would read its exit status as 0 and a crash would pass for a finished run.
OWN: set[int] = set()


def reap() -> None:
    """Collect exited orphans handed to this subreaper (else they stay zombies)."""
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(stat.parent.name)
        if fields[0] == "Z" and fields[1] == me and pid not in OWN:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def kill_pid(pid: int, sig: int = signal.SIGKILL) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out


# -- redis-server with its append-only file ---------------------------------------
class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not on PATH; run scripts/setup.sh")
        cmd = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
        ]
        with (self.dir / "redis-server.log").open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        OWN.add(self.proc.pid)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start; see {self.dir}") from None
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


# -- one scenario: a run, the faults, the reviewer, the accounting -----------------
@dataclass
class Engines:
    tiny: Path
    critic: Path
    local: int  # batching engine: the critic
    seq: int  # sequential engine: attacker and learner


@dataclass
class Leg:
    """One run id: started, killed and restarted until it finishes its budget."""

    run_id: str
    run_dir: Path
    starts: int = 0
    kills: int = 0
    exits: list[str] = field(default_factory=list)  # unplanned exits: the log's last line
    finished: bool = False


class Reviewer(threading.Thread):
    """Answers every review request of a run through the review API, after a
    short random delay, as a person with `sparring review` would."""

    def __init__(self, url: str, run_id: str, rng: random.Random) -> None:
        super().__init__(daemon=True)
        from sparring.bus import make_bus

        self.bus = make_bus(url, "", namespace=run_id)
        self.rng = rng
        self.stop = threading.Event()
        self.answered = 0

    def run(self) -> None:
        seen: dict[str, float] = {}
        while not self.stop.wait(0.5):
            try:
                answered = {d.msg_id for d in self.bus.history("reviews")}
                for d in self.bus.history("review_requests"):
                    if d.msg_id in answered:
                        continue
                    due = seen.setdefault(d.msg_id, time.monotonic() + self.rng.uniform(0.5, 4))
                    if time.monotonic() < due:
                        continue
                    review = HumanReview(
                        episode_id=d.payload["episode_id"],
                        node=d.payload["node"],
                        harmful=self.rng.random() < 0.5,
                        helpfulness=self.rng.randint(1, 10),
                        critique=f"reviewed by the fault suite ({d.msg_id})",
                        reviewer="faults",
                    )
                    self.answered += submit(self.bus, review)
            except redis.RedisError:
                continue  # redis-server is down (the redis scenario): try again
        self.bus.close()


def run_config(
    tmp: Path,
    eng: Engines,
    url: str,
    runs_dir: Path,
    episodes: int,
    seed: int,
    learner_port: int | None = None,
    final_version: bool = False,
) -> Path:
    """``final_version``: the end of the run trains what is left (the disk
    scenario's; the others leave the rest on the bus, counted as unacked)."""
    cfg = {
        "run_name": "faults",
        "runs_dir": str(runs_dir),
        "models": {"tiny": {"path": str(eng.tiny)}, "critic": {"path": str(eng.critic)}},
        "engines": {
            "local": {"kind": "external", "managed": False, "port": eng.local},
            "seq": {"kind": "external", "managed": False, "port": eng.seq},
            "learner": {
                "kind": "external",
                "managed": False,
                "port": learner_port or eng.seq,
                "startup_timeout_s": 120,
            },
        },
        "roles": {
            "attacker": {"engine": "seq", "model": "tiny", "max_tokens": 12, "temperature": 1.0},
            "learner": {"engine": "learner", "model": "tiny", "max_tokens": 12, "timeout_s": 10},
            "critic": {"engine": "local", "model": "critic", "max_tokens": 16},
        },
        "budget": {"episodes": episodes, "learner_versions": None, "minutes": 30},
        "loop": {
            "concurrency": 4,
            "contrast": False,
            "benign_share": 0.0,
            "seed_share": 0.0,
            "pair_margin": 0,
            "seed": seed,
            "review_below_confidence": 4,
            "review_wait_s": 120,
            "task_claim_after_s": 3600,
        },
        "trainer": {
            "managed": True,
            "pairs_per_version": 2,
            "max_length": 64,
            "bf16": False,
            "learning_rate": 1e-3,
            "poll_s": 0.2,
            "threads": 1,
            "epochs": 1,
            "lineage": "continue",  # versions mid-run, as when faults.json was measured
            "final_version": final_version,
            "final_wait_minutes": 3,
        },
        "promotion": {"gate": False},
        "bus": {"redis_url": url},
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class Scenario:
    """A target's runs: the orchestrator as a subprocess, restarted whenever it
    exits before its budget is done; ``fault`` is called every tick."""

    def __init__(
        self,
        name: str,
        tmp: Path,
        eng: Engines,
        rng: random.Random,
        episodes: int,
        learner_port: int | None = None,
    ) -> None:
        self.name = name
        self.tmp = tmp
        self.eng = eng
        self.rng = rng
        self.episodes = episodes
        self.redis = RedisServer(tmp / "redis")
        self.redis.start()
        self.runs_dir = tmp / "runs"
        self.config = run_config(
            tmp, eng, self.redis.url, self.runs_dir, episodes, rng.randint(0, 10**6), learner_port
        )
        self.legs: list[Leg] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.planned_kill = False
        self.started_at = 0.0
        # the children import this checkout's sparring, whatever is installed
        path = os.pathsep.join(x for x in (str(REPO), os.environ.get("PYTHONPATH")) if x)
        self.env: dict[str, str] = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}

    # -- the orchestrator process ------------------------------------------------
    def start(self, leg: Leg) -> None:
        leg.starts += 1
        log = (self.tmp / f"{leg.run_id}.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sparring",
                "run",
                "--config",
                str(self.config),
                "--run-id",
                leg.run_id,
                "--no-progress",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=REPO,
        )
        log.close()
        OWN.add(self.proc.pid)
        self.started_at = time.monotonic()
        self.planned_kill = False

    def last_line(self, leg: Leg, limit: int = 300) -> str:
        lines = (self.tmp / f"{leg.run_id}.log").read_text(errors="replace").strip().splitlines()
        return lines[-1][-limit:] if lines else ""

    def run_leg(
        self,
        leg: Leg,
        fault: Callable[[Leg], None],
        deadline: float,
        on_exit: Callable[[Leg, int], bool] | None = None,
    ) -> None:
        """Run ``leg`` to the end of its budget, restarting the orchestrator
        when it exits early; ``on_exit`` may stop the restarts (returns False).
        At the deadline the run gets SIGTERM and is resumed with faults off
        (up to ``FINISH_AFTER_DEADLINE_S``), so what it counts is final."""
        self.legs.append(leg)
        finishing = False
        reviewer = Reviewer(self.redis.url, leg.run_id, random.Random(self.rng.random()))
        reviewer.start()
        self.start(leg)
        try:
            while True:
                time.sleep(0.2)
                reap()
                assert self.proc is not None
                code = self.proc.poll()
                if code is not None:
                    OWN.discard(self.proc.pid)  # collected: the pid may be reused
                if code == 0:
                    leg.finished = True
                    return
                if code is not None:
                    if not self.planned_kill:
                        leg.exits.append(f"exit {code}: {self.last_line(leg)}")
                    if on_exit is not None and not on_exit(leg, code):
                        return
                    if leg.starts > 3 * MAX_TRAINER_RESTARTS + 12:
                        leg.exits.append("gave up restarting the orchestrator")
                        return
                    self.start(leg)
                    continue
                if time.monotonic() > deadline:
                    self.proc.send_signal(signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.proc.wait(120)
                    if finishing:
                        leg.exits.append("stopped with SIGTERM: not finished after the deadline")
                        return
                    # counted once finished: resumed with its --run-id, faults off
                    leg.exits.append("scenario deadline: stopped with SIGTERM, resumed, no faults")
                    finishing, fault = True, lambda _leg: None
                    deadline = time.monotonic() + FINISH_AFTER_DEADLINE_S
                    self.start(leg)
                    continue
                fault(leg)
        finally:
            reviewer.stop.set()
            reviewer.join(5)
            if self.proc and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.orphans(leg)

    def orphans(self, leg: Leg) -> list[int]:
        """Processes of ``leg`` still running once its orchestrator is gone (a
        killed orchestrator's trainer): stopped here, and counted."""
        left = processes_naming(str(leg.run_dir))
        for pid in left:
            kill_pid(pid)
        time.sleep(0.2)
        reap()
        return left

    def trainer_pids(self, leg: Leg) -> list[int]:
        return [p for p in processes_naming(str(leg.run_dir)) if _is_trainer(p)]

    def close(self) -> None:
        self.redis.stop()


def _is_trainer(pid: int) -> bool:
    try:
        return b"sparring.training.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


# -- accounting -------------------------------------------------------------------
def _unacked(r: redis.Redis, prefix: str, stream: str, group: str) -> set[str]:
    """msg ids of ``stream`` that ``group`` has not acked (pending, or not yet read)."""
    key = f"{prefix}:stream:{stream}"
    if not r.exists(key):
        return set()
    entries = {eid: fields["id"] for eid, fields in r.xrange(key, "-", "+")}
    groups = {g["name"]: g for g in r.xinfo_groups(key)}
    if group not in groups:
        return set(entries.values())
    last = groups[group]["last-delivered-id"]
    pel = {p["message_id"] for p in r.xpending_range(key, group, "-", "+", 100000)}

    def after(eid: str) -> bool:
        a, b = (int(x) for x in eid.split("-"))
        c, d = (int(x) for x in last.split("-"))
        return (a, b) > (c, d)

    return {mid for eid, mid in entries.items() if eid in pel or after(eid)}


def count(url: str, leg: Leg) -> dict[str, Any]:
    from sparring.bus import make_bus
    from sparring.training.worker import complete_versions

    bus = make_bus(url, "", namespace=leg.run_id)
    r = redis.Redis.from_url(url, decode_responses=True)
    prefix = f"sparring:{leg.run_id}"
    try:
        tasks = [d.msg_id for d in bus.history("tasks")]
        episodes = {d.msg_id: d.payload for d in bus.history("episodes")}
        pairs = [d.msg_id for d in bus.history("pairs")]
        published = [d.payload for d in bus.history("versions")]
        reviews = [d.payload for d in bus.history("reviews")]
        requests = [d.msg_id for d in bus.history("review_requests")]
        tasks_open = _unacked(r, prefix, "tasks", "orchestrators")
        pairs_open = _unacked(r, prefix, "pairs", "trainer")
        reviews_open = _unacked(r, prefix, "reviews", f"reviews-{CONSUMER}")
    finally:
        bus.close()
        r.close()
    versions = complete_versions(leg.run_dir / "versions", "learner")
    trainer_log = jsonl(leg.run_dir / "trainer.log")
    trace = jsonl(leg.run_dir / "trace.jsonl")

    in_versions = Counter(pid for m in versions.values() for pid in m.pair_ids)
    refused = {e["pair_id"] for e in trainer_log if e.get("event") == "trainer.refused_pair"}
    refused |= {e["msg_id"] for e in trainer_log if e.get("event") == "trainer.bad_pair"}
    pairs_lost = [
        p for p in pairs if p not in in_versions and p not in refused and p not in pairs_open
    ]
    by_number = Counter(int(m["version"]) for m in published)
    differs = [
        m["version"]
        for m in published
        if int(m["version"]) in versions and m["pair_ids"] != versions[int(m["version"])].pair_ids
    ]
    trained_to_end = Counter(
        e["version"] for e in trainer_log if e.get("event") == "version.published"
    )
    twice = {v for v, n in by_number.items() if n > 1} | set(differs)
    twice |= {v for v, n in trained_to_end.items() if n > 1}

    lost_reviews = []
    for rv in reviews:
        ep = episodes.get(rv["episode_id"])
        rid = f"{rv['episode_id']}:{rv['node']}"
        if ep is None:
            if rid not in reviews_open:
                lost_reviews.append(rid)  # acked, and its episode never finished
            continue
        key = "critique" if rv["node"] == "critique" else "refined_critique"
        c = ep.get(key) or {}
        if (c.get("critic") or {}).get("role") != "human" or c.get("text") != rv["critique"]:
            lost_reviews.append(rid)
    events = Counter(e.get("event") for e in trace)
    # A version's training begun again while a previous start of it is still
    # going (no trainer (re)start logged between): two trainers at once.
    overlapping, open_starts = 0, set()
    for e in trainer_log:
        if e.get("event") == "trainer.started":
            open_starts.clear()
        elif e.get("event") == "train.start":
            overlapping += e["version"] in open_starts
            open_starts.add(e["version"])
        elif e.get("event") in ("version.published", "train.diverged", "trainer.disk_full"):
            open_starts.discard(e.get("version"))
    # The same graph node run twice for one episode. After an orchestrator kill
    # the node in flight runs again from its checkpoint (expected); otherwise two
    # executions of one episode at once.
    runs = Counter((e.get("episode_id"), e.get("node")) for e in trace if e.get("event") == "node")
    retried = {
        e["episode_id"]
        for e in trace
        if e.get("event") in ("episode.retrying", "episode.resumed", "episode.resume_retrying")
    }
    return {
        "episodes_lost": sum(t not in episodes and t not in tasks_open for t in tasks),
        "pairs_lost": len(pairs_lost),
        "pairs_trained_twice": sum(n > 1 for n in in_versions.values()),
        "versions_published_twice": len(twice),
        "reviews_lost": len(lost_reviews),
        "tasks": len(tasks),
        "episodes": len(episodes),
        "episodes_left_unacked": len(tasks_open - set(episodes)),
        "episodes_retried_or_resumed": len(retried),
        "episodes_given_up": events["episode.failed"],
        "pairs": len(pairs),
        "pairs_trained": len(in_versions),
        "pairs_refused": len(refused & set(pairs)),
        "pairs_left_unacked": len(pairs_open),
        "versions": len(versions),
        "versions_on_stream": len(published),
        "review_requests": len(requests),
        "reviews": len(reviews),
        "reviews_left_unacked": len(reviews_open),
        "trainer_starts": sum(e.get("event") == "trainer.started" for e in trainer_log),
        "trainings_overlapping": overlapping,
        "episode_nodes_run_twice": sum(n > 1 for n in runs.values()),
        "episodes_left_paused": sum(
            len(e.get("episodes", [])) for e in trace if e.get("event") == "run.left_paused"
        ),
        "lost_ids": {
            "pairs": pairs_lost[:10],
            "reviews": lost_reviews[:10],
            "versions_twice": sorted(twice),
        },
    }


def leg_record(scn: Scenario, leg: Leg) -> dict[str, Any]:
    return {
        "run_id": leg.run_id,
        "kills": leg.kills,
        "finished": leg.finished,
        "unplanned_exits": leg.exits,
        "counts": count(scn.redis.url, leg),
    }


def total(legs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for leg in legs:
        for k, v in leg["counts"].items():
            if isinstance(v, int):
                out[k] = out.get(k, 0) + v
    return out


def last_event(path: Path) -> str:
    events = jsonl(path)
    return str(events[-1].get("event")) if events else "(none yet)"


# -- the faults --------------------------------------------------------------------
def run_legs(
    scn: Scenario,
    name: str,
    fault: Callable[[Leg], None],
    deadline: float,
    enough: Callable[[], bool],
) -> list[dict[str, Any]]:
    """Runs of the loop one after another (``name``-0, -1, ...), each faulted by
    ``fault``, until ``enough()`` or the deadline; each leg's record."""
    legs = []
    while not enough() and time.monotonic() < deadline:
        leg = Leg(f"{name}-{len(scn.legs)}", scn.runs_dir / f"{name}-{len(scn.legs)}")
        scn.run_leg(leg, fault, deadline)
        legs.append(leg_record(scn, leg))
    return legs


class Clock:
    """When the next fault is due: a seeded uniform draw after ``since``."""

    def __init__(self, rng: random.Random, low: float, high: float) -> None:
        self.rng, self.low, self.high = rng, low, high
        self.due: float | None = None

    def arm(self, since: float | None = None) -> None:
        self.due = (since or time.monotonic()) + self.rng.uniform(self.low, self.high)

    def ready(self) -> bool:
        return self.due is not None and time.monotonic() >= self.due


def trainer_faults(scn: Scenario, n: int, bar: Callable[[], None], deadline: float) -> list[dict]:
    """Every other kill is aimed at a training step (after the trainer logged
    ``train.start``, before ``train.done``: the batch's pairs unacked, its
    folder half-written); the others fall 1-15 s after a (re)start, seeded."""
    clock = Clock(scn.rng, 1.0, 15.0)
    done: list[dict[str, Any]] = []
    phases: Counter[str] = Counter()
    watched: dict[str, Any] = {"pid": None, "since": 0.0, "aim": None, "seen": 0}

    def fault(leg: Leg) -> None:
        if len(done) >= n or leg.kills >= MAX_TRAINER_RESTARTS:
            return
        pids = scn.trainer_pids(leg)
        if not pids:
            return
        log = leg.run_dir / "trainer.log"
        if pids[0] != watched["pid"]:  # a trainer (re)started: choose how to kill it
            # (its log's earlier events are its predecessors')
            watched.update(pid=pids[0], since=time.monotonic(), seen=len(jsonl(log)))
            watched["aim"] = "train.start" if len(done) % 2 == 0 else None
            clock.arm()
            if watched["aim"]:  # once training has started: 0-1.5 s into the step
                clock.due = None
        if watched["aim"] and clock.due is None:
            mine = jsonl(log)[watched["seen"] :]
            if mine and mine[-1].get("event") == watched["aim"]:
                clock.due = time.monotonic() + scn.rng.uniform(0.0, 1.5)
            elif time.monotonic() - watched["since"] > TRAINING_WAIT_S:
                clock.due = time.monotonic()  # no step came: killed where it is
        if clock.ready():
            phase = last_event(log)
            if kill_pid(pids[0]):
                phases[phase] += 1
                leg.kills += 1
                done.append({"leg": leg.run_id, "aimed_at": watched["aim"], "after_event": phase})
                clock.due = None
                bar()

    legs = run_legs(scn, "trainer", fault, deadline, lambda: len(done) >= n)
    return [{"kills": len(done), "kill_points": dict(phases), "at": done, "legs": legs}]


def orchestrator_faults(
    scn: Scenario, n: int, bar: Callable[[], None], deadline: float
) -> list[dict]:
    clock = Clock(scn.rng, 5.0, 25.0)
    phases: Counter[str] = Counter()
    orphans: list[int] = []
    kills = 0

    def fault(leg: Leg) -> None:
        nonlocal kills
        if kills >= n or scn.proc is None:
            return
        if clock.due is None or clock.due < scn.started_at:
            clock.arm(scn.started_at)
        if clock.ready():
            phases[last_event(leg.run_dir / "trace.jsonl")] += 1
            trainers = scn.trainer_pids(leg)
            scn.planned_kill = True
            scn.proc.kill()  # the orchestrator alone: its trainer runs on, orphaned
            scn.proc.wait()
            kills += 1
            leg.kills += 1
            clock.due = None
            # the orphaned trainer is left running, as it would be: count it
            time.sleep(0.5)
            orphans.extend(p for p in trainers if p in scn.trainer_pids(leg))
            bar()

    legs = run_legs(scn, "orch", fault, deadline, lambda: kills >= n)
    return [
        {
            "kills": kills,
            "kill_points": dict(phases),
            "orphaned_trainers": len(set(orphans)),
            "legs": legs,
        }
    ]


def redis_faults(scn: Scenario, n: int, bar: Callable[[], None], deadline: float) -> list[dict]:
    clock = Clock(scn.rng, 2.0, 10.0)
    downtimes: list[float] = []

    def fault(leg: Leg) -> None:
        if len(downtimes) >= n:
            return
        if clock.due is None:
            clock.arm(scn.started_at)
        if clock.ready():
            down = round(scn.rng.uniform(0.0, 1.5), 2)
            scn.redis.kill()
            time.sleep(down)
            scn.redis.start()
            downtimes.append(down)
            leg.kills += 1
            clock.arm()
            bar()

    legs = run_legs(scn, "redis", fault, deadline, lambda: len(downtimes) >= n)
    return [{"kills": len(downtimes), "downtime_s": downtimes, "legs": legs}]


def engine_faults(
    scn: Scenario, engine: EngineProcess, n: int, bar: Callable[[], None], deadline: float
) -> list[dict]:
    clock = Clock(scn.rng, 4.0, 12.0)
    outages: list[float] = []

    def fault(leg: Leg) -> None:
        if len(outages) >= n:
            return
        if clock.due is None:
            clock.arm(scn.started_at)
        if clock.ready() and (leg.run_dir / "trace.jsonl").is_file():
            t0 = time.monotonic()
            assert engine.pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(engine.pid, signal.SIGKILL)
            time.sleep(scn.rng.uniform(2.0, 6.0))
            engine.start()  # the same port; waits until it answers /health
            outages.append(round(time.monotonic() - t0, 1))
            leg.kills += 1
            clock.arm()
            bar()

    legs = run_legs(scn, "engine", fault, deadline, lambda: len(outages) >= n)
    return [{"kills": len(outages), "outage_s": outages, "legs": legs}]


# -- disk full ---------------------------------------------------------------------
def half_written(run_dir: Path) -> dict[str, Any]:
    """What a full disk may have left half-written in a run directory."""
    out: dict[str, Any] = {}
    learner = run_dir / "versions" / "learner"
    out["versions_incomplete"] = (
        sorted(d.name for d in learner.glob("v*") if not (d / COMPLETE_MARKER).is_file())
        if learner.is_dir()
        else []
    )
    out["partial_tmp_dirs"] = (
        sorted(d.name for d in learner.glob(".v*.tmp")) if learner.is_dir() else []
    )
    bad_json = []
    for name in ("summary.json",):
        p = run_dir / name
        if p.is_file():
            try:
                json.loads(p.read_text())
            except json.JSONDecodeError:
                bad_json.append(name)
    cfg = run_dir / "config.yaml"
    if cfg.is_file() and not isinstance(yaml.safe_load(cfg.read_text() or "null"), dict):
        bad_json.append("config.yaml")
    out["unreadable_files"] = bad_json
    trace = run_dir / "trace.jsonl"
    lines = trace.read_text(errors="replace").splitlines() if trace.is_file() else []
    out["trace_partial_lines"] = sum(1 for x in lines if x and not _parses(x))
    ck = run_dir / "checkpoints.sqlite"
    if ck.is_file():
        try:
            with contextlib.closing(sqlite3.connect(ck)) as db:
                out["checkpoints_integrity"] = db.execute("PRAGMA integrity_check").fetchone()[0]
        except sqlite3.Error as err:
            out["checkpoints_integrity"] = f"error: {err}"
    return out


def _parses(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


@contextlib.contextmanager
def tmpfs(path: Path, size_mb: int) -> Iterator[bool]:
    path.mkdir(parents=True, exist_ok=True)
    ok = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
            capture_output=True,
        ).returncode
        == 0
    )
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def disk_fault(
    tmp: Path,
    eng: Engines,
    rng: random.Random,
    episodes: int,
    bar: Callable[[], None],
    deadline: float,
) -> dict[str, Any]:
    """The run directory on a 14 MiB tmpfs: room for the run's files and one
    learner version (~10 MB, merged weights), not two. The run (with
    ``trainer.final_version``, as users run it) must stop with a clear error
    that says how to resume, and leave nothing half-written; then the disk
    grows, the run resumes with its --run-id and trains every pair left."""
    mnt = tmp / "small-disk"
    with tmpfs(mnt, 14) as mounted:
        if not mounted:
            return {"skipped": "cannot mount a tmpfs here (needs root); nothing measured"}
        scn = Scenario("disk", tmp, eng, rng, episodes)
        scn.runs_dir = mnt
        scn.config = run_config(
            tmp, eng, scn.redis.url, mnt, episodes, rng.randint(0, 10**6), final_version=True
        )
        leg = Leg("disk-0", mnt / "disk-0")
        try:
            scn.run_leg(leg, lambda _leg: None, deadline, on_exit=lambda _leg, _code: False)
            bar()
            assert scn.proc is not None
            trace = jsonl(leg.run_dir / "trace.jsonl")
            full: dict[str, Any] = {
                "exit_code": scn.proc.returncode,
                "orchestrator_says": scn.last_line(leg, limit=2000),
                "left": half_written(leg.run_dir),
                "disk_free_kib": shutil.disk_usage(mnt).free // 1024,
                "trainer_errors": sorted(
                    {
                        _error_line(e)
                        for e in jsonl(leg.run_dir / "trainer.log")
                        if e.get("level") == "error"
                    }
                )[:5],
                "trainer_tracebacks": sorted(set(_tracebacks(leg.run_dir / "trainer.log")))[:5],
                "run_warnings": dict(
                    Counter(
                        str(e.get("event")) for e in trace if e.get("level") in ("warning", "error")
                    )
                ),
            }
            subprocess.run(["mount", "-o", "remount,size=400m", str(mnt)], check=True)
            first = count(scn.redis.url, leg)
            leg.exits, leg.finished, scn.legs = [], False, []
            scn.run_leg(leg, lambda _leg: None, deadline)
            return {
                "tmpfs_mib": 14,
                "at_disk_full": full,
                "counts_when_full": first,
                "clear_error": full["exit_code"] != 0
                and "no space left" in full["orchestrator_says"]
                and f"--run-id {leg.run_id}" in full["orchestrator_says"],
                "resumed_after_freeing_space": {
                    "finished": leg.finished,
                    "unplanned_exits": leg.exits,
                },
                "counts": count(scn.redis.url, leg),
                "left_after_resume": half_written(leg.run_dir),
            }
        finally:
            scn.close()


def _error_line(e: dict[str, Any]) -> str:
    return f"{e.get('event')}: {str(e.get('error') or e.get('message') or '')[:300]}"


def _tracebacks(log: Path) -> list[str]:
    """The last line of each Python traceback in a log (the exception raised)."""
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    out, inside = [], False
    for line in lines:
        if line.startswith("Traceback"):
            inside = True
        elif inside and line and not line.startswith((" ", "\t")):
            out.append(line[:300])
            inside = False
    return out


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[str]:
    if keep is not None:
        yield str(keep.resolve())
        return
    with tempfile.TemporaryDirectory(prefix="sparring-faults-") as tmp:
        yield tmp


SUMMARY = (
    "episodes_lost",
    "pairs_lost",
    "pairs_trained_twice",
    "versions_published_twice",
    "reviews_lost",
    "trainings_overlapping",
    "episode_nodes_run_twice",
)


def summary(r: dict[str, Any]) -> dict[str, Any]:
    figures = r.get("totals") or r.get("counts") or {}
    faults = r.get("kills", 1 if "at_disk_full" in r else 0)
    return {"faults": faults, **{k: figures.get(k) for k in SUMMARY}}


# -- main --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=10, help="faults of each kind (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--only", choices=TARGETS, action="append", default=[], help="only this fault (repeatable)"
    )
    ap.add_argument("--episodes", type=int, default=12, help="episodes per run (leg)")
    ap.add_argument("--minutes", type=float, default=8.0, help="time limit per fault kind")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the runs, logs and redis files here (default: a temporary directory, deleted)",
    )
    args = ap.parse_args(argv)
    targets = args.only or list(TARGETS)
    become_subreaper()
    smol = pull_smollm2(progress=False)
    tiny = build_tiny_model(cache_dir() / "models" / "tiny-test", tokenizer_from=smol)
    rng = random.Random(args.seed)
    result: dict[str, Any] = {
        "benchmark": "faults",
        "n": args.n,
        "seed": args.seed,
        "episodes_per_leg": args.episodes,
        "setup": "python -m sparring run subprocess; Redis bus (redis-server --appendonly yes "
        "--appendfsync everysec); attacker+learner: a 2-layer random model, critic: "
        "SmolLM2-135M; transformers serve engines; trainer: DPO, 2 pairs per version; "
        "human review on (confidence < 4 and judge errors), answered through the "
        "review API by a thread of this script",
        "faults": {},
    }
    t_start = time.monotonic()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=False)
    with (
        _workdir(args.workdir) as tmp_s,
        Progress(
            TextColumn("[bold]{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress,
    ):
        tmp = Path(tmp_s)
        local = EngineConfig(port=free_port(), startup_timeout_s=180, threads=1)
        seq = EngineConfig(
            port=free_port(), continuous_batching=False, startup_timeout_s=180, threads=1
        )
        with (
            EngineProcess("faults-local", local, tmp / "engine-local.log"),
            EngineProcess("faults-seq", seq, tmp / "engine-seq.log"),
        ):
            eng = Engines(tiny, smol, local.port, seq.port)
            for target in targets:
                t0 = time.monotonic()
                task = progress.add_task(target, total=1 if target == "disk" else args.n)
                bar = lambda task=task: progress.advance(task)  # noqa: E731
                deadline = time.monotonic() + args.minutes * 60
                sub = tmp / target
                sub.mkdir()
                one: Any
                if target == "disk":
                    one = disk_fault(
                        sub, eng, random.Random(rng.random()), args.episodes, bar, deadline
                    )
                elif target == "engine":
                    ecfg = EngineConfig(
                        port=free_port(),
                        continuous_batching=False,
                        startup_timeout_s=180,
                        threads=1,
                    )
                    with EngineProcess("faults-learner", ecfg, sub / "engine.log") as proc:
                        scn = Scenario(
                            target,
                            sub,
                            eng,
                            random.Random(rng.random()),
                            args.episodes,
                            learner_port=ecfg.port,
                        )
                        try:
                            one = engine_faults(scn, proc, args.n, bar, deadline)[0]
                        finally:
                            scn.close()
                else:
                    scn = Scenario(target, sub, eng, random.Random(rng.random()), args.episodes)
                    run = {
                        "trainer": trainer_faults,
                        "orchestrator": orchestrator_faults,
                        "redis": redis_faults,
                    }[target]
                    try:
                        one = run(scn, args.n, bar, deadline)[0]
                    finally:
                        scn.close()
                if "legs" in one:
                    one["totals"] = total(one["legs"])
                one["seconds"] = round(time.monotonic() - t0, 1)
                result["faults"][target] = one
    result["summary"] = {t: summary(r) for t, r in result["faults"].items()}
    result["seconds"] = round(time.monotonic() - t_start, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
