"""The engines a run uses: its base bindings, the engine processes it starts,
and bringing every engine up, loaded and warm (the names and processes
themselves: :mod:`sparring.serving.deploy`)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from sparring.agents import Binding, OpenAIChat
from sparring.config import RunConfig
from sparring.redact import mask_text
from sparring.serving.deploy import engine_process, role_model
from sparring.serving.engine import EngineProcess, wait_for_engine
from sparring.serving.loaders import load_role_adapters
from sparring.serving.registry import warm
from sparring.tracing import Tracer


def base_bindings(cfg: RunConfig, model_paths: dict[str, Path]) -> dict[str, Binding]:
    return {
        role: Binding(role, cfg.engines[rc.engine].url(), role_model(cfg, role, model_paths))
        for role, rc in cfg.roles.items()
    }


def engine_used(cfg: RunConfig, name: str) -> bool:
    """A role is bound to it, or the canary gate answers on it."""
    gate = cfg.promotion.gate and cfg.promotion.engine == name
    return gate or any(rc.engine == name for rc in cfg.roles.values())


def sampling_temperature(cfg: RunConfig, role: str) -> float:
    return cfg.engines[cfg.roles[role].engine].sampling_temperature


def managed_engines(
    cfg: RunConfig, model_paths: dict[str, Path], run_dir: Path
) -> list[EngineProcess]:
    """The engine processes this run starts (and stops): managed ones in use."""
    return [
        engine_process(cfg, name, model_paths, run_dir / f"engine-{name}.log")
        for name, ec in cfg.engines.items()
        if ec.managed and engine_used(cfg, name)
    ]


async def bring_up(
    cfg: RunConfig,
    engines: list[EngineProcess],
    model_paths: dict[str, Path],
    chat: OpenAIChat,
    console: Console,
    tracer: Tracer,
) -> dict[str, Binding]:
    """Start ``engines``, wait for the remote ones, load the roles' adapters and
    warm every base model: the roles' base bindings, ready to answer."""
    for engine in engines:
        with console.status(f"starting engine '{engine.name}' ({engine.cfg.kind})"):
            engine.start()
        tracer.log.info("engine.started", engine=engine.name, pid=engine.pid)
    for name, ec in cfg.engines.items():
        if not ec.managed:
            with console.status(f"waiting for engine '{name}' at {mask_text(ec.url())}"):
                await wait_for_engine(name, ec)
    with console.status("loading the roles' adapters"):
        await load_role_adapters(cfg, cfg.roles)
    bindings = base_bindings(cfg, model_paths)
    with console.status("loading base models into the engine"):
        await _warm_models(cfg, chat, bindings)
    return bindings


async def _warm_models(cfg: RunConfig, chat: OpenAIChat, bindings: dict[str, Binding]) -> None:
    """One warm-up request per distinct (engine, model), so none pays a cold load later."""
    distinct = {(b.base_url, b.model): (role, b) for role, b in bindings.items()}
    for role, b in distinct.values():
        await warm(chat, b, temperature=sampling_temperature(cfg, role))
