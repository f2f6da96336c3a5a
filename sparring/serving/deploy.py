"""How a run's config maps onto engines: the names requests give its models,
the engine processes sparring starts, and the model folders this machine needs.
Shared by a run (:mod:`sparring.orchestrator`) and ``sparring eval``."""

from __future__ import annotations

from pathlib import Path

from sparring.config import ConfigError, EngineConfig, RunConfig
from sparring.serving.engine import EngineProcess
from sparring.serving.loaders import adapter_name
from sparring.serving.models import ModelFolderError, resolve_model_path


def served_model(cfg: RunConfig, name: str, model_paths: dict[str, Path]) -> str:
    """What requests name to reach base model ``name``: its served name, else its
    local folder (transformers serve loads folders by path), else its hub id."""
    src = cfg.models[name]
    if src.served_name:
        return src.served_name
    if name in model_paths:
        return str(model_paths[name])
    return str(src.hub_id or src.path)


def role_model(cfg: RunConfig, role: str, model_paths: dict[str, Path]) -> str:
    """What ``role``'s requests name: its adapter (roles.X.adapter), else its base model."""
    rc = cfg.roles[role]
    return adapter_name(role) if rc.adapter else served_model(cfg, rc.model, model_paths)


def engine_process(
    cfg: RunConfig,
    name: str,
    model_paths: dict[str, Path],
    log_path: Path,
    engine: EngineConfig | None = None,
) -> EngineProcess:
    """The process for managed engine ``name`` (``engine``: its config, when it
    differs from ``cfg``'s, e.g. on another port). A vllm engine serves the one
    base model its roles bind, under the name requests use for it."""
    ec = engine or cfg.engines[name]
    if ec.kind != "vllm":
        return EngineProcess(name, ec, log_path)
    model = next(rc.model for rc in cfg.roles.values() if rc.engine == name)
    src = cfg.models[model]
    weights = str(model_paths[model]) if model in model_paths else str(src.hub_id or src.path)
    return EngineProcess(
        name, ec, log_path, model=weights, served_name=served_model(cfg, model, model_paths)
    )


def local_models(cfg: RunConfig) -> dict[str, Path]:
    """Folders of the models that must be on this machine: those an engine
    sparring starts serves, and the learner's base when the trainer runs here.
    Models only a remote engine serves (vLLM in docker compose) are named, not
    loaded, so the orchestrator needs neither their weights nor torch."""
    needed = {rc.model for rc in cfg.roles.values() if cfg.engines[rc.engine].managed}
    if cfg.trainer.managed:
        needed.add(cfg.roles["learner"].model)
    out = {}
    for name, src in cfg.models.items():
        if src.hub_id is not None:
            continue
        if name in needed or (src.builtin is None and src.served_name is None):
            try:
                out[name] = resolve_model_path(src.builtin, src.path)
            except ModelFolderError as err:
                raise ConfigError(f"models.{name}.path: {err}") from None
    return out
