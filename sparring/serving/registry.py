"""Role -> served model binding, and the hot swap that moves it.

A role's active version is a pointer on the bus. It moves only after the
engine has loaded the new version and answered a warm-up request naming it;
episodes read the pointer once when they start and keep that binding to the
end, so an in-flight episode never changes weights half way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sparring.bus import Bus, Delivery
from sparring.bus.streams import VERSIONS
from sparring.config import check_name
from sparring.llm import Binding, Chat
from sparring.schemas import SCHEMA_VERSION, RolePointer, VersionPublished, newer_schema
from sparring.serving.loaders import LoadRefused, PathLoader, VersionLoader

POINTER_KEY = "role:{role}"


class Registry:
    def __init__(
        self,
        bus: Bus,
        base: dict[str, Binding],
        follow_learner: frozenset[str] = frozenset(),
        pinned: dict[str, int] | None = None,
        version_model: Callable[[int, str], str] | None = None,
        versions_dir: Path | None = None,
    ) -> None:
        """``versions_dir``: the run's ``versions/``; announced versions whose
        folder is not inside it (under their role) are refused (see :meth:`refusal`)."""
        self._bus = bus
        self.versions_dir = versions_dir
        self._base = base
        # roles bound with version: latest, served from the learner's pointer
        self._follow = follow_learner
        # roles bound to one learner version: role -> N, and how requests name N
        self.pinned = dict(pinned or {})
        self._version_model = version_model or (lambda n, path: path)
        self._pinned_models: dict[int, str] = {}
        # lease (an episode id) -> the (role, version) it holds until released
        self._leases: dict[str, tuple[str, int]] = {}

    def refusal(self, role: str, path: str) -> str | None:
        """Why an announced version must not be loaded, or None. Anyone who can
        write to the bus can announce one, so its folder is taken only where it
        resolves (links followed) inside ``versions_dir/<role>/``; without a
        ``versions_dir`` (tests, tools serving any folder) every one is taken."""
        if self.versions_dir is None:
            return None
        try:
            check_name(role)
            root = (self.versions_dir / role).resolve()
            inside = root in Path(path).resolve().parents
        except (ValueError, OSError):  # a role with a separator, a NUL in the path
            inside = False
        return None if inside else f"its folder is not inside {self.versions_dir}/{role}/"

    @property
    def in_flight(self) -> Counter[tuple[str, int]]:
        """How many episodes of this process hold each (role, version)."""
        return Counter(self._leases.values())

    def pointer(self, role: str) -> RolePointer | None:
        raw = self._bus.get_pointer(POINTER_KEY.format(role=role))
        return RolePointer.model_validate(raw) if raw else None

    def binding(self, role: str) -> Binding:
        """The role's binding now: the configured base, or the version the pointer names."""
        base = self._base[role]
        if role in self.pinned:
            return self._pinned_binding(role, base)
        ptr = self.pointer("learner" if role in self._follow else role)
        if ptr is None:
            return base
        return Binding(role=role, base_url=base.base_url, model=ptr.model, version=ptr.version)

    def _pinned_binding(self, role: str, base: Binding) -> Binding:
        n = self.pinned[role]
        if n not in self._pinned_models:
            published = [
                VersionPublished.model_validate(d.payload) for d in self._bus.history(VERSIONS.name)
            ]
            mine = [
                v
                for v in published
                if v.role == "learner" and v.version == n and not self.refusal(v.role, v.path)
            ]
            if not mine:
                return base  # version N is not out yet
            self._pinned_models[n] = self._version_model(n, mine[0].path)
        return Binding(role, base.base_url, self._pinned_models[n], n)

    def flip(self, role: str, version: int, model: str) -> RolePointer:
        ptr = RolePointer(role=role, version=version, model=model)
        self._bus.set_pointer(POINTER_KEY.format(role=role), ptr.model_dump(mode="json"))
        return ptr

    def acquire(self, role: str, lease: str) -> Binding:
        """The role's binding now, held under ``lease`` (an episode id) until
        :meth:`release`: a held version is never unloaded."""
        binding = self.binding(role)
        self._leases[lease] = (role, binding.version)
        return binding

    def hold(self, lease: str, role: str, version: int) -> None:
        """Re-take a lease for an episode resumed from its checkpoint."""
        self._leases[lease] = (role, version)

    def release(self, lease: str) -> None:
        """Idempotent: an episode that finished, failed or was cancelled."""
        self._leases.pop(lease, None)


async def warm(
    chat: Chat,
    binding: Binding,
    *,
    temperature: float = 1.0,
    attempts: int = 3,
    delay_s: float = 2.0,
) -> float:
    """Ask the engine for a one-token answer from ``binding``; returns seconds taken.

    On the CPU engine the first request naming a model directory loads it, so a
    success here means the version is loaded and serving. That first request
    also fixes the model's sampling settings under continuous batching
    (``transformers serve`` shares one generation config per loaded model), so
    ``temperature`` is the engine's ``sampling_temperature``, never 0.
    """
    start = time.perf_counter()
    for attempt in range(attempts):
        try:
            await chat(
                binding,
                [{"role": "user", "content": "Hello"}],
                temperature=temperature,
                max_tokens=1,
            )
            return time.perf_counter() - start
        except Exception:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(delay_s * (attempt + 1))
    raise AssertionError("unreachable")


@dataclass
class RoleServing:
    """How the swapper reaches a hot-swapped role's engine."""

    loader: VersionLoader
    replicas: list[str] = field(default_factory=list)  # empty: the role's base_url


class Swapper:
    """Consumes the trainer's ``versions`` stream: for each new version, load and
    warm it on every replica of the role's engine, then flip the pointer; later,
    unload versions that fell out of the keep window."""

    def __init__(
        self,
        bus: Bus,
        registry: Registry,
        chat: Chat,
        log: Any,
        *,
        group: str,
        consumer: str = "swapper",
        serving: dict[str, RoleServing] | None = None,
        keep_versions: int = 2,
        unload_after_s: float = 900.0,
        on_flip: Callable[[RolePointer], None] | None = None,
        temperature: float | Mapping[str, float] = 1.0,
        gate: Any = None,
        retry_s: float = 60.0,
        served_roles: Collection[str] | None = None,
    ) -> None:
        """``gate``: a :class:`sparring.eval.canary.CanaryGate`, or a gate per
        role (a role without one is flipped to as loaded); a loaded version is
        flipped to only if its role's gate promotes it.
        ``served_roles``: the roles whose versions it swaps in (None: every
        role); another trained role's versions are acked and left. ``retry_s``:
        how long a version whose load failed waits before the next try (it is
        reported once, not at every try)."""
        self._bus = bus
        self._retry_s = retry_s
        # announcement msg_id -> monotonic time of its next try, after a failure
        self._retry_at: dict[str, float] = {}
        self._reported: set[tuple[str, int]] = set()
        self._reported_msgs: set[tuple[str, str]] = set()
        self._gate = gate
        self._temperature = temperature
        self._registry = registry
        self._chat = chat
        self._log = log
        self._group = group
        self._consumer = consumer
        self._serving = serving or {}
        self._served_roles = None if served_roles is None else set(served_roles)
        self._keep = keep_versions
        self._unload_after_s = unload_after_s
        self._on_flip = on_flip
        self.unloaded: set[tuple[str, int]] = set()

    def temperature(self, role: str) -> float:
        """The sampling temperature ``role``'s engine fixes at a version's warm-up."""
        t = self._temperature
        return t.get(role, 1.0) if isinstance(t, Mapping) else t

    def gate(self, role: str) -> Any:
        """The gate that decides on ``role``'s versions, or None."""
        if isinstance(self._gate, Mapping):
            return self._gate.get(role)
        return self._gate

    def _role(self, role: str) -> RoleServing:
        return self._serving.get(role) or RoleServing(PathLoader())

    def _replicas(self, role: str) -> list[str]:
        return self._role(role).replicas or [self._registry.binding(role).base_url]

    async def run(self, stop: asyncio.Event, poll_s: float = 0.5, collect_s: float = 10.0) -> None:
        next_collect = 0.0
        while not stop.is_set():
            # Pending (failed, waiting) announcements come back first: read past them.
            try:
                deliveries = await asyncio.to_thread(
                    self._bus.read,
                    VERSIONS.name,
                    self._group,
                    self._consumer,
                    4 + len(self._retry_at),
                    0,
                    3600.0,
                )
            except Exception as err:
                # The bus is down past its own retries (a Redis restart that takes
                # long): keep serving what is loaded and read again later, rather
                # than end hot swapping for the rest of the run.
                self._log.warning("swap.bus_unavailable", error=repr(err)[:300])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=min(self._retry_s, 5.0))
                continue
            tried = 0
            for d in deliveries:
                if self._retry_at.get(d.msg_id, 0.0) > time.monotonic():
                    continue
                tried += 1
                try:
                    published = self._announcement(d)
                    if published is None:
                        continue  # a newer sparring's: left for a swapper that reads it
                    if self._served_roles is not None and published.role not in self._served_roles:
                        # a trained role no graph node of this run calls: its
                        # versions are recorded, not served
                        self._log.info(
                            "swap.not_served", role=published.role, version=published.version
                        )
                    elif not self.superseded(published):
                        await self.swap(published)
                except (LoadRefused, ValidationError):
                    pass  # never loadable: acked below, reported by swap() or _announcement()
                except Exception:
                    # Not acked: tried again after retry_s (and after a restart);
                    # serving stays on the version that works.
                    self._retry_at[d.msg_id] = time.monotonic() + self._retry_s
                    continue
                self._retry_at.pop(d.msg_id, None)
                self._bus.ack(VERSIONS.name, self._group, [d.msg_id])
            if time.monotonic() >= next_collect:
                next_collect = time.monotonic() + collect_s
                with contextlib.suppress(Exception):
                    await self.collect()  # logged inside; retried next round
            if not tried:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=poll_s)

    def _announcement(self, d: Delivery) -> VersionPublished | None:
        """The version a ``versions`` message announces; None (held, reported once)
        for one of a newer schema. Raises ValidationError (reported) for garbage:
        retrying cannot fix it, so it is acked."""
        if written_by := newer_schema(d.payload):
            self._retry_at[d.msg_id] = time.monotonic() + self._retry_s
            if ("schema", d.msg_id) not in self._reported_msgs:
                self._reported_msgs.add(("schema", d.msg_id))
                self._log.warning(
                    "swap.newer_schema",
                    msg_id=d.msg_id,
                    schema_version=written_by,
                    understood=SCHEMA_VERSION,
                )
            return None
        try:
            return VersionPublished.model_validate(d.payload)
        except ValidationError as err:
            self._log.error(
                "swap.bad_announcement",
                msg_id=d.msg_id,
                action="acked, skipped",
                error=str(err)[:500],
            )
            raise

    def superseded(self, published: VersionPublished) -> bool:
        """With a canary gate: a newer version of the role is already published,
        so this one is skipped (never gated, never served; the trainer may still
        build on it). A gate slower than the trainer then checks the newest
        version instead of falling further behind."""
        if self.gate(published.role) is None:
            return False
        newer = [
            int(d.payload.get("version", 0))
            for d in self._bus.history(VERSIONS.name)
            if d.payload.get("role") == published.role
            and not self._registry.refusal(published.role, str(d.payload.get("path")))
        ]
        if max(newer, default=0) <= published.version:
            return False
        self._log.info(
            "swap.superseded", role=published.role, version=published.version, newest=max(newer)
        )
        return True

    async def swap(self, published: VersionPublished) -> RolePointer | None:
        role, version = published.role, published.version
        if why := self._registry.refusal(role, published.path):
            # never loaded, never written to: acked by run() as never loadable
            self._log.error(
                "swap.refused",
                role=role,
                version=version,
                path=published.path[:500],
                error=f"announcement refused: {why}",
            )
            raise LoadRefused(f"{role} v{version} at {published.path}: {why}")
        current = self._registry.pointer(role)
        if current is not None and current.version >= version:
            return None  # a re-delivered or out-of-date announcement
        base = self._registry.binding(role)
        loader = self._role(role).loader
        model = loader.model_name(role, version, published.path)
        replicas = self._replicas(role)
        self._log.info(
            "swap.warming", role=role, version=version, mode=loader.mode, replicas=len(replicas)
        )
        start = time.perf_counter()
        try:
            for url in replicas:
                await loader.load(url, role, version, published.path)
                await warm(
                    self._chat,
                    Binding(role, url, model, version),
                    temperature=self.temperature(role),
                )
        except Exception as err:
            if (role, version) not in self._reported:  # once per version, not per try
                self._reported.add((role, version))
                self._log.error(
                    "swap.refused" if isinstance(err, LoadRefused) else "swap.failed",
                    role=role,
                    version=version,
                    replica=url,
                    error=str(err)[:500],
                    retry_in_s=None if isinstance(err, LoadRefused) else self._retry_s,
                    serving_version=base.version,
                )
            raise
        if self.gate(role) is not None and not await self._promoted(
            published, Binding(role, replicas[0], model, version), base, loader, replicas
        ):
            return None
        ptr = self._registry.flip(role, version, model)
        self._log.info(
            "swap.flipped",
            role=role,
            version=version,
            model=model,
            previous_version=base.version,
            warm_s=round(time.perf_counter() - start, 3),
            replicas=len(replicas),
            in_flight_previous=self._registry.in_flight[(role, base.version)],
        )
        if self._on_flip:
            self._on_flip(ptr)
        return ptr

    async def _promoted(
        self,
        published: VersionPublished,
        candidate: Binding,
        serving: Binding,
        loader: VersionLoader,
        replicas: list[str],
    ) -> bool:
        """Run the canary gate; a rejected version is unloaded again and stays
        on disk, marked rejected (the bus's ``promotions`` stream, and a
        ``rejected.json`` beside its manifest where that folder is reachable)."""
        role, version = published.role, published.version
        start = time.perf_counter()
        decision = await self.gate(role).check(role, candidate, serving)
        fields = dict(
            role=role,
            version=version,
            against=decision.against,
            reason=decision.reason,
            metrics=decision.metrics,
            baseline=decision.baseline,
            canary_s=round(time.perf_counter() - start, 2),
        )
        if decision.promoted:
            self._log.info("swap.promoted", **fields)
            return True
        self._log.warning("swap.rejected", **fields)
        marker = Path(published.path) / "rejected.json"
        with contextlib.suppress(OSError):
            if marker.parent.is_dir():
                marker.write_text(decision.model_dump_json(indent=2))
        for url in replicas:
            try:
                await loader.unload(url, role, version, candidate.model)
            except Exception as err:  # it stays loaded, unused; serving is unaffected
                self._log.error(
                    "swap.unload_failed", role=role, version=version, error=str(err)[:500]
                )
        self.unloaded.add((role, version))
        return False

    def retirable(self, role: str, now: float | None = None) -> list[VersionPublished]:
        """Versions of ``role`` outside the keep window that no local episode
        holds and that were replaced at least ``unload_after_s`` ago (episodes
        of other orchestrators that started on them have finished by then)."""
        ptr = self._registry.pointer(role)
        if ptr is None:
            return []
        now = time.time() if now is None else now
        published = {
            v.version: v
            for d in self._bus.history(VERSIONS.name)
            if (v := VersionPublished.model_validate(d.payload)).role == role
            and not self._registry.refusal(role, v.path)
        }
        out = []
        for n, v in sorted(published.items()):
            successor = published.get(n + 1)
            if (
                n > ptr.version - self._keep
                or n in self._registry.pinned.values()
                or (role, n) in self.unloaded
                or self._registry.in_flight[(role, n)]
                or successor is None
                or now - successor.published_at < self._unload_after_s
            ):
                continue
            out.append(v)
        return out

    async def collect(self, now: float | None = None) -> list[int]:
        """Unload retirable versions on every replica; returns the versions done.
        The base model (v0) is never unloaded."""
        done: list[int] = []
        for role, serving in self._serving.items():
            for v in self.retirable(role, now):
                model = serving.loader.model_name(role, v.version, v.path)
                try:
                    freed = [
                        await serving.loader.unload(url, role, v.version, model)
                        for url in self._replicas(role)
                    ]
                except Exception as err:
                    self._log.error(
                        "swap.unload_failed", role=role, version=v.version, error=str(err)[:500]
                    )
                    raise
                self.unloaded.add((role, v.version))
                done.append(v.version)
                if any(freed):
                    self._log.info("swap.unloaded", role=role, version=v.version, model=model)
        return done
