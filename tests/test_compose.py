"""docker compose, checked where no Docker engine runs: the files are validated by
a real compose implementation (docker-compose, Debian's package, installed by
scripts/setup.sh), and their wiring is checked on what it resolves them to."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sparring.config import ConfigError, load_config
from tests.helpers import env_file as read_env

ROOT = Path(__file__).resolve().parent.parent
ENV_EXAMPLE = ROOT / ".env.example"
GPU_SERVICES = ("vllm", "trainer")


def env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    return read_env(path)


def compose_config(*files: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is missing: run scripts/setup.sh (installs Debian's package)"
    args = [exe, "--project-directory", str(ROOT)]
    for f in files:
        args += ["-f", str(ROOT / f)]
    clean = {k: v for k, v in os.environ.items() if k not in env_file()}
    proc = subprocess.run(
        [*args, "config"], capture_output=True, text=True, cwd=ROOT, env={**clean, **(env or {})}
    )
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return compose_config("docker-compose.yml", env=env_file())


def test_compose_files_are_valid_for_a_real_compose_implementation(stack: dict) -> None:
    assert set(stack["services"]) == {"redis", "vllm", "trainer", "orchestrator"}
    per_role = compose_config("docker-compose.yml", "docker-compose.per-role.yml", env=env_file())
    assert {"vllm-attacker", "vllm-critic"} <= set(per_role["services"])
    env = per_role["services"]["orchestrator"]["environment"]
    assert env["ATTACKER_URL"] == "http://vllm-attacker:8000/v1"
    assert env["CRITIC_SERVED_NAME"] == "critic"
    assert per_role["services"]["orchestrator"]["depends_on"]["vllm-critic"] == {
        "condition": "service_healthy"
    }


def test_a_missing_redis_password_stops_compose_with_a_hint() -> None:
    env = {k: v for k, v in env_file().items() if k != "REDIS_PASSWORD"}
    exe = shutil.which("docker-compose")
    assert exe
    clean = {k: v for k, v in os.environ.items() if k not in env_file()}
    proc = subprocess.run(
        [exe, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, **env},
    )
    assert proc.returncode != 0 and "set REDIS_PASSWORD in .env" in proc.stderr


def test_every_service_the_compose_docs_name_exists(stack: dict) -> None:
    docs = (ROOT / "docs" / "compose.md").read_text()
    section = docs.split("# GPUs: docker compose", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `([a-z-]+)` \|", section, re.M))
    per_role = compose_config("docker-compose.yml", "docker-compose.per-role.yml", env=env_file())
    assert named >= {"redis", "vllm", "trainer", "orchestrator", "vllm-attacker", "vllm-critic"}
    assert named <= set(per_role["services"])


def test_healthchecks_gate_the_start_order(stack: dict) -> None:
    services = stack["services"]
    for name in ("redis", "vllm"):
        assert services[name]["healthcheck"]["test"], name
    assert "redis-cli ping" in " ".join(services["redis"]["healthcheck"]["test"])
    assert "http://localhost:8000/health" in services["vllm"]["healthcheck"]["test"]
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}, which has none"
    assert services["orchestrator"]["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "vllm": {"condition": "service_healthy"},
        "trainer": {"condition": "service_started"},
    }
    assert services["trainer"]["depends_on"]["redis"] == {"condition": "service_healthy"}


def _mounts(svc: dict) -> dict[str, str]:
    out = {}
    for v in svc.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        else:
            source, target = v["source"], v["target"]
        out[source] = target
    return out


def test_versions_volume_is_shared_at_one_path_and_redis_persists(stack: dict) -> None:
    services = stack["services"]
    # The trainer publishes absolute paths; vLLM and the orchestrators must
    # see the same files at the same place.
    for name in ("vllm", "trainer", "orchestrator"):
        assert _mounts(services[name]).get("sparring-data") == "/data", name
    assert set(stack["volumes"]) >= {"sparring-data", "redis-data", "hf-cache"}
    redis = services["redis"]
    assert _mounts(redis)["redis-data"] == "/data"
    # (the password reaches it on stdin: tests/test_secrets.py runs this command)
    script = redis["command"][-1]
    assert "--appendonly yes" in script and "requirepass $$REDISCLI_AUTH" in script


def test_vllm_is_pinned_and_can_load_adapters_at_run_time(stack: dict) -> None:
    vllm = stack["services"]["vllm"]
    image, _, tag = vllm["image"].partition(":")
    assert image == "vllm/vllm-openai" and re.fullmatch(r"v\d+\.\d+\.\d+", tag)
    assert "--enable-lora" in vllm["command"]
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    rank = int(vllm["command"][vllm["command"].index("--max-lora-rank") + 1])
    assert rank >= int(env_file()["LORA_R"])
    assert vllm["command"][vllm["command"].index("--served-model-name") + 1] == "base"


def test_vllm_and_trainer_get_their_own_gpu(stack: dict) -> None:
    ids = {}
    for name in GPU_SERVICES:
        (dev,) = stack["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
        ids[name] = dev["device_ids"]
    assert ids["vllm"] != ids["trainer"]
    assert "deploy" not in stack["services"]["orchestrator"]  # no GPU, no torch


def test_env_defaults_parse_into_the_run_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env_file().items():
        monkeypatch.setenv(key, value)
    cfg = load_config(ROOT / "configs" / "compose.yaml")
    learner = cfg.engines["learner"]
    assert (learner.kind, learner.managed, learner.swap_mode()) == ("vllm", False, "lora")
    assert cfg.trainer.publish == "adapter" and not cfg.trainer.managed
    assert cfg.bus.redis_url == f"redis://:{env_file()['REDIS_PASSWORD']}@redis:6379/0"
    assert cfg.budget.episodes is None and cfg.budget.learner_versions == 10
    assert cfg.models["base"].served_name == "base"
    # Every variable the compose files or the config read has a documented default.
    used = set()
    for f in ("docker-compose.yml", "docker-compose.per-role.yml", "configs/compose.yaml"):
        text = re.sub(r"#.*", "", (ROOT / f).read_text())
        used |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    assert used <= set(env_file()) | {"REDIS_HOST"}


def test_full_weight_mode_needs_merged_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env_file().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SWAP_MODE", "full")
    with pytest.raises(ConfigError, match="trainer.publish: merged"):
        load_config(ROOT / "configs" / "compose.yaml")
    monkeypatch.setenv("TRAINER_PUBLISH", "merged")
    # one set of weights in place: no candidate can be canaried beside the serving one
    with pytest.raises(ConfigError, match="PROMOTION_GATE|promotion.gate"):
        load_config(ROOT / "configs" / "compose.yaml")
    monkeypatch.setenv("PROMOTION_GATE", "false")
    assert load_config(ROOT / "configs" / "compose.yaml").engines["learner"].swap == "full"


def test_a_missing_variable_names_the_file_field_and_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    monkeypatch.setenv("ENGINE_API_KEY", "a-key")
    with pytest.raises(ConfigError, match=r"compose.yaml: bus.redis_url: .*REDIS_PASSWORD"):
        load_config(ROOT / "configs" / "compose.yaml")


def _dockerfile(name: str) -> str:
    return (ROOT / "docker" / name).read_text()


@pytest.mark.parametrize("name", ["orchestrator.Dockerfile", "trainer.Dockerfile"])
def test_images_run_as_a_non_root_user(name: str) -> None:
    users = re.findall(r"^USER\s+(\S+)", _dockerfile(name), re.M)
    assert users and users[-1] not in ("root", "0")


def test_only_the_trainer_image_carries_torch() -> None:
    orch = _dockerfile("orchestrator.Dockerfile")
    assert "[ml]" not in orch and "torch==" not in orch
    assert "pip install ." in orch
    trainer = _dockerfile("trainer.Dockerfile")
    assert 'pip install ".[ml]"' in trainer and "torch==" in trainer
    deps = " ".join(_pyproject()["project"]["dependencies"])
    for heavy in ("torch", "transformers", "trl", "peft", "vllm"):
        assert not re.search(rf"\b{heavy}\b", deps), heavy


def _pyproject() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_orchestrator_runs_its_compose_config_without_torch() -> None:
    """The orchestrator image has no torch: everything `sparring run` does with
    the compose config before talking to vLLM must work without it."""
    script = """
import sys
for name in ("torch", "transformers", "trl", "peft", "vllm"):
    sys.modules[name] = None  # any import of them now fails
from sparring.cli import main
from sparring.config import load_config
from sparring.orchestrator import base_bindings, local_models
cfg = load_config("configs/compose.yaml")
paths = local_models(cfg)
assert paths == {}, paths
b = base_bindings(cfg, paths)
assert (b["learner"].base_url, b["learner"].model) == ("http://vllm:8000/v1", "base"), b
print("ok")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env_file()},
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
