"""Run configuration: pydantic v2 models loaded from YAML.

A bad file fails at once with the file, the dotted field path and what was
expected, e.g. ``configs/x.yaml: roles.critic.max_tokens: Input should be a
valid integer (got 'many')``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ROLES = ("attacker", "learner", "critic")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSource(Strict):
    """A base model: ``builtin`` names one sparring can build (``smollm2``),
    ``path`` names any local Hugging Face folder."""

    builtin: Literal["smollm2"] | None = None
    path: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.builtin is None) == (self.path is None):
            raise ValueError("give exactly one of 'builtin' or 'path'")
        return self


class EngineConfig(Strict):
    kind: Literal["transformers-serve", "vllm", "external"] = "transformers-serve"
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=1, le=65535)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    continuous_batching: bool = True
    # auto: bf16 where the device has native bf16 (AVX512-BF16/AMX, recent GPUs), else fp32
    dtype: Literal["bfloat16", "float32", "auto"] = "auto"
    # Paged KV cache per loaded model (continuous batching). The engine's default
    # sizes it from free memory, ~6 GB per model on a 24 GB machine; versions add up.
    cb_block_size: int = Field(default=32, ge=1)
    cb_num_blocks: int = Field(default=1024, ge=1)
    # transformers serve with continuous batching fixes temperature/top_p per
    # loaded model at its first request; sparring warms every model (base and
    # each new version) with this temperature. Per-role temperatures then apply
    # only on engines that honour per-request sampling (vLLM, or no CB).
    sampling_temperature: float = Field(default=1.0, gt=0.0, le=2.0)
    # Unload a model version nobody asked for in this long (re-loaded on demand).
    model_timeout_s: int = Field(default=600, ge=-1)
    # torch/OpenMP threads for the engine process (None: one per core). On a
    # small CPU shared by two engines and a trainer, 1 each avoids oversubscription.
    threads: int | None = Field(default=None, ge=1)
    managed: bool = True
    startup_timeout_s: float = Field(default=120.0, gt=0)
    base_url: str | None = None

    def url(self) -> str:
        return self.base_url or f"http://{self.host}:{self.port}/v1"


class RoleConfig(Strict):
    engine: str = "local"
    model: str = "smollm2"
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(default=96, ge=1)
    timeout_s: float = Field(default=120.0, gt=0)


class BudgetConfig(Strict):
    episodes: int | None = Field(default=None, ge=1)
    learner_versions: int | None = Field(default=3, ge=1)
    minutes: float | None = Field(default=30.0, gt=0)


class LoopConfig(Strict):
    graph: str = "redteam"
    concurrency: int = Field(default=12, ge=1)
    critic_retries: int = Field(default=2, ge=0, le=5)
    # Few-shot examples in each critic prompt (of those in critic_examples.yaml).
    # Prompt prefill is over half the engine's work per episode on a CPU.
    critic_shots: int = Field(default=2, ge=0, le=3)
    pair_margin: int = Field(default=1, ge=0, le=9)
    attacker_recent_window: int = Field(default=32, ge=0)
    seed: int = 0


class BusConfig(Strict):
    redis_url: str | None = None
    sqlite_path: Path | None = None


class TrainerConfig(Strict):
    pairs_per_version: int = Field(default=3, ge=1)
    max_length: int = Field(default=256, ge=16)
    learning_rate: float = Field(default=5e-5, gt=0)
    beta: float = Field(default=0.1, gt=0)
    epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=2, ge=1)
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    bf16: bool | Literal["auto"] = "auto"  # auto: bf16 only where it is native
    threads: int | None = Field(default=1, ge=1)  # torch threads (None: one per core)
    managed: bool = True
    poll_s: float = Field(default=1.0, gt=0)


TRAINED_ROLE = "learner"


class RunConfig(Strict):
    run_name: str = "default"
    runs_dir: Path = Path("runs")
    models: dict[str, ModelSource] = Field(
        default_factory=lambda: {"smollm2": ModelSource(builtin="smollm2")}
    )
    # transformers serve runs ONE model per process under continuous batching
    # (asking it for another model restarts its batcher and fails requests in
    # flight), so the learner, whose versions overlap during a hot swap, gets
    # its own engine without it: one sequential generator per loaded version.
    engines: dict[str, EngineConfig] = Field(
        default_factory=lambda: {
            "local": EngineConfig(threads=1),
            "learner": EngineConfig(port=8766, continuous_batching=False, threads=1),
        }
    )
    roles: dict[str, RoleConfig] = Field(
        default_factory=lambda: {
            "attacker": RoleConfig(temperature=1.0, max_tokens=48),
            "learner": RoleConfig(engine="learner", temperature=0.7, max_tokens=64),
            "critic": RoleConfig(temperature=1.0, max_tokens=40),
        }
    )
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    bus: BusConfig = Field(default_factory=BusConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)

    @model_validator(mode="after")
    def _bindings_resolve(self) -> RunConfig:
        missing = [r for r in ROLES if r not in self.roles]
        if missing:
            raise ValueError(f"roles must bind {', '.join(missing)}")
        for name, role in self.roles.items():
            if role.engine not in self.engines:
                raise ValueError(
                    f"roles.{name}.engine names '{role.engine}', "
                    f"but engines defines only {sorted(self.engines)}"
                )
            if role.model not in self.models:
                raise ValueError(
                    f"roles.{name}.model names '{role.model}', "
                    f"but models defines only {sorted(self.models)}"
                )
        self._one_model_per_batching_engine()
        return self

    def _one_model_per_batching_engine(self) -> None:
        """transformers serve with continuous batching serves one model at a time."""
        for ename, engine in self.engines.items():
            if engine.kind != "transformers-serve" or not engine.continuous_batching:
                continue
            users = {r: rc.model for r, rc in self.roles.items() if rc.engine == ename}
            if len(set(users.values())) > 1:
                raise ValueError(
                    f"engines.{ename} (transformers serve, continuous_batching) serves one "
                    f"model at a time, but roles {sorted(users)} bind different models "
                    f"{sorted(set(users.values()))}: give each model its own engine"
                )
            if TRAINED_ROLE in users:
                raise ValueError(
                    f"engines.{ename} (transformers serve, continuous_batching) serves one "
                    f"model at a time, but roles.{TRAINED_ROLE} is hot-swapped (two versions "
                    f"overlap): bind it to an engine with continuous_batching: false"
                )


class ConfigError(Exception):
    """A config file that cannot be used; the message says where and why."""


def _format(path: Path | str, err: ValidationError) -> str:
    lines = [f"{path}: invalid config ({err.error_count()} problem(s))"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown field; check the spelling{got_s}")
        else:
            lines.append(f"  {where}: {e['msg']}{got_s}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: Path | str = "<config>") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(source, err)) from None


def load_config(path: Path | str | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML run config (or the defaults when ``path`` is None)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: no such config file")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    if overrides:
        defaults = RunConfig().model_dump(mode="json")
        for dotted, value in overrides.items():
            _set_dotted(data, dotted, value, defaults)
    return parse_config(data, path or "<defaults>")


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, defaults: dict[str, Any]) -> None:
    """Set ``a.b.c`` = value. A section the file leaves out starts from its default,
    so ``roles.critic.max_tokens=20`` changes one field, not the whole roles map."""
    node, default = data, defaults
    *parents, leaf = dotted.split(".")
    for key in parents:
        default = default.get(key, {}) if isinstance(default, dict) else {}
        if key not in node:
            node[key] = copy.deepcopy(default) if isinstance(default, dict) else {}
        node = node[key]
    node[leaf] = value
