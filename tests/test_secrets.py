"""Secrets stay out of what others can read: the run's config.yaml (on a volume
the engine container mounts too), config errors, process command lines; the
engine key reaches vLLM and every request sparring sends it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from sparring.bus import make_bus
from sparring.config import ConfigError, load_config
from sparring.llm import Binding, OpenAIChat
from sparring.orchestrator import Loop
from sparring.process import free_port
from sparring.review import open_run_bus
from sparring.serving.engine import EngineProcess
from sparring.serving.loaders import load_role_adapters, make_loader
from tests.helpers import env_file
from tests.plugins.redis_server import stop
from tests.test_compose import ENV_EXAMPLE, compose_config

PASSWORD = "hunter2-Zq8vX3"
KEY = "engine-key-Lm4pR7"


def _redis_server(tmp: Path, script: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``sh -c script``, which must exec redis-server (so the pid is the server's)."""
    log = (tmp / "redis.log").open("wb")
    proc = subprocess.Popen(["sh", "-c", script], stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    return proc


def _wait_for_auth(url: str, proc: subprocess.Popen[bytes]) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "redis-server exited"
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        pytest.fail("redis-server did not answer PING")
    finally:
        client.close()


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A real redis-server that wants PASSWORD, given on stdin: (host, port)."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: run scripts/setup.sh"
    tmp, port = tmp_path_factory.mktemp("locked-redis"), free_port()
    script = (
        f"exec {binary} - --port {port} --bind 127.0.0.1 --save '' --dir {tmp} <<EOF\n"
        "requirepass $PW\nEOF\n"
    )
    proc = _redis_server(tmp, script, {**os.environ, "PW": PASSWORD})
    try:
        _wait_for_auth(f"redis://:{PASSWORD}@127.0.0.1:{port}/0", proc)
        yield "127.0.0.1", port
    finally:
        stop(proc)


def _config(tmp_path: Path, redis_url: str, api_key: str | None = None) -> Path:
    """A compose-like run: remote engines and trainer, so nothing is started."""
    engine: dict[str, Any] = {"kind": "vllm", "managed": False, "base_url": "http://127.0.0.1:9/v1"}
    if api_key is not None:
        engine["api_key"] = api_key
    data = {
        "run_name": "sec",
        "runs_dir": str(tmp_path / "runs"),
        "models": {"base": {"hub_id": "org/model", "served_name": "base"}},
        "engines": {"vllm": engine},
        "roles": {
            r: {"engine": "vllm", "model": "base"} for r in ("attacker", "learner", "critic")
        },
        "bus": {"redis_url": redis_url},
        "trainer": {"managed": False, "publish": "adapter"},
        "promotion": {"engine": None},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _prepared(config: Path) -> tuple[Path, str]:
    cfg = load_config(config)
    run_dir = cfg.runs_dir / "sec-1"
    Loop(cfg, run_dir, progress=False).prepare()
    return run_dir, (run_dir / "config.yaml").read_text()


def _bus_works(run_dir: Path, url: str) -> None:
    bus = make_bus(url, run_dir / "bus.sqlite", namespace=run_dir.name)
    try:
        bus.publish("pairs", "p1", {"x": 1})  # again on a resume: the id dedupes it
        assert [d.msg_id for d in bus.history("pairs")] == ["p1"]
    finally:
        bus.close()


def _review_bus_works(run_dir: Path) -> None:
    bus = open_run_bus(run_dir)
    try:
        assert [d.msg_id for d in bus.history("pairs")] == ["p1"]
    finally:
        bus.close()


def test_a_password_written_in_the_config_is_masked_on_disk_and_comes_back_from_the_env(
    tmp_path: Path, locked_redis: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    host, port = locked_redis
    url = f"redis://:{PASSWORD}@{host}:{port}/0"
    redis.Redis.from_url(url).flushall()
    run_dir, text = _prepared(_config(tmp_path, url))
    assert PASSWORD not in text
    assert yaml.safe_load(text)["bus"]["redis_url"] == f"redis://:***@{host}:{port}/0"

    # The trainer re-reads config.yaml: without the password it says where to put it ...
    from sparring.redact import secret_env

    monkeypatch.delenv("SPARRING_BUS_REDIS_URL", raising=False)
    with pytest.raises(ConfigError) as err:
        load_config(run_dir / "config.yaml")
    assert "SPARRING_BUS_REDIS_URL" in str(err.value) and PASSWORD not in str(err.value)
    # ... and the runner hands it the password in its environment, off the command line.
    env = secret_env(load_config(_config(tmp_path, url)))
    assert env == {"SPARRING_BUS_REDIS_URL": url}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    resumed = load_config(run_dir / "config.yaml")
    assert resumed.bus.redis_url == url
    _bus_works(run_dir, resumed.bus.redis_url)
    _review_bus_works(run_dir)  # `sparring review` reads the same file


def test_a_password_given_as_an_env_reference_stays_a_reference_on_disk(
    tmp_path: Path, locked_redis: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    host, port = locked_redis
    monkeypatch.setenv("SPARRING_TEST_REDIS_PW", PASSWORD)
    redis.Redis.from_url(f"redis://:{PASSWORD}@{host}:{port}/0").flushall()
    ref = f"redis://:${{SPARRING_TEST_REDIS_PW}}@{host}:{port}/0"
    run_dir, text = _prepared(_config(tmp_path, ref))
    assert PASSWORD not in text
    assert yaml.safe_load(text)["bus"]["redis_url"] == ref
    # resumed (the trainer, `sparring review`) with the same environment
    resumed = load_config(run_dir / "config.yaml")
    _bus_works(run_dir, resumed.bus.redis_url)
    _review_bus_works(run_dir)
    # an override on the command line is a literal again: masked
    cfg = load_config(_config(tmp_path, ref), {"bus.redis_url": f"redis://:x{PASSWORD}@h:1/0"})
    Loop(cfg, run_dir, progress=False).prepare()
    on_disk = yaml.safe_load((run_dir / "config.yaml").read_text())["bus"]["redis_url"]
    assert on_disk == "redis://:***@h:1/0"


@pytest.mark.parametrize(
    "text",
    [
        f"bus: 'redis://:{PASSWORD}@redis:6379/0'\n",  # the section given as a string
        f"bus: {{redis_uri: 'redis://:{PASSWORD}@redis:6379/0'}}\n",  # a typo
        f"bus: {{redis_url: ['redis://:{PASSWORD}@redis:6379/0']}}\n",  # a wrong type
        f"engines: {{local: {{api_key: [{PASSWORD}]}}}}\n",
        f"engines: {{local: {{apikey: {PASSWORD}}}}}\n",
    ],
    ids=["section-as-string", "typo", "wrong-type", "key-wrong-type", "key-typo"],
)
def test_a_config_error_never_echoes_a_secret(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "bus" in msg or "engines.local" in msg
    assert PASSWORD not in msg


def test_the_engine_key_reaches_vllm_by_its_environment_and_never_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPARRING_TEST_ENGINE_KEY", KEY)
    config = _config(tmp_path, "", api_key="${SPARRING_TEST_ENGINE_KEY}")
    cfg = load_config(config)
    ec = cfg.engines["vllm"].model_copy(update={"managed": True})
    cmd, env = EngineProcess("vllm", ec, tmp_path / "e.log", model="m", served_name="b").command()
    assert KEY not in " ".join(cmd)  # a command line is visible to every user (ps)
    assert env["VLLM_API_KEY"] == KEY
    assert KEY not in repr(cfg) and KEY not in str(cfg.model_dump(mode="json"))
    run_dir, text = _prepared(config)
    assert KEY not in text
    assert yaml.safe_load(text)["engines"]["vllm"]["api_key"] == "${SPARRING_TEST_ENGINE_KEY}"
    assert load_config(run_dir / "config.yaml").engines["vllm"].api_key is not None
    # written as a literal: masked, and restored from the environment
    config = _config(tmp_path, "", api_key=KEY)
    run_dir, text = _prepared(config)
    assert KEY not in text and yaml.safe_load(text)["engines"]["vllm"]["api_key"] == "***"
    monkeypatch.setenv("SPARRING_ENGINES_VLLM_API_KEY", KEY)
    key = load_config(run_dir / "config.yaml").engines["vllm"].api_key
    assert key is not None and key.get_secret_value() == KEY


class _Vllm(BaseHTTPRequestHandler):
    """vLLM's answers, behind its bearer check (the routes under /v1)."""

    seen: list[tuple[str, str | None]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"] or 0)) or b"{}")
        self.seen.append((self.path, self.headers.get("Authorization")))
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._send(401, {"error": "Unauthorized"})
        if self.path == "/v1/chat/completions":
            return self._send(
                200,
                {
                    "id": "c",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "ok"},
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                },
            )
        self._send(200, "Success: LoRA adapter added successfully.")

    def _send(self, status: int, body: Any) -> None:
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_vllm() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Vllm)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Vllm.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_chat_and_adapter_calls_send_the_engine_key(
    tmp_path: Path, fake_vllm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sparring.serving.engine import engine_keys

    monkeypatch.setenv("SPARRING_TEST_ENGINE_KEY", KEY)
    adapter = tmp_path / "critic-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    config = _config(tmp_path, "", api_key="${SPARRING_TEST_ENGINE_KEY}")
    data = yaml.safe_load(config.read_text())
    data["engines"]["vllm"]["base_url"] = fake_vllm
    data["roles"]["critic"]["adapter"] = str(adapter)
    config.write_text(yaml.safe_dump(data))
    cfg = load_config(config)

    async def calls() -> None:
        chat = OpenAIChat(timeout_s=10, max_retries=0, api_keys=engine_keys(cfg))
        try:
            out = await chat(
                Binding("learner", fake_vllm, "base"),
                [{"role": "user", "content": "hi"}],
                temperature=0.0,
                max_tokens=4,
            )
            assert out.text == "ok"
        finally:
            await chat.aclose()
        async with httpx.AsyncClient(timeout=10) as http:
            loader = make_loader(cfg.engines["vllm"], http, "base")
            await loader.load(fake_vllm, "learner", 1, str(tmp_path / "v1"))
        await load_role_adapters(cfg, ["critic"])

    asyncio.run(calls())
    assert [p for p, _ in _Vllm.seen] == [
        "/v1/chat/completions",
        "/v1/load_lora_adapter",
        "/v1/load_lora_adapter",
    ]
    assert {auth for _, auth in _Vllm.seen} == {f"Bearer {KEY}"}


def test_compose_keeps_the_redis_password_off_the_command_line(tmp_path: Path) -> None:
    env = {**env_file(ENV_EXAMPLE), "REDIS_PASSWORD": PASSWORD}
    redis_svc = compose_config("docker-compose.yml", env=env)["services"]["redis"]
    assert PASSWORD not in json.dumps(redis_svc["command"])
    # Run its command with this machine's redis-server in place of the image's
    # entrypoint (which drops to the redis user and execs the same arguments).
    shell, flag, script = redis_svc["command"]
    assert (shell, flag) == ("sh", "-c")
    port = free_port()
    binary = shutil.which("redis-server")
    assert binary and "exec docker-entrypoint.sh redis-server " in script
    script = script.replace("$$", "$").replace(  # compose's own escape, undone in the container
        "docker-entrypoint.sh redis-server",
        f"{binary} --port {port} --bind 127.0.0.1 --dir {tmp_path}",
    )
    proc = _redis_server(tmp_path, script, {**os.environ, **redis_svc["environment"]})
    try:
        _wait_for_auth(f"redis://:{PASSWORD}@127.0.0.1:{port}/0", proc)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        assert "redis-server" in cmdline and PASSWORD not in cmdline
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert PASSWORD not in ps
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        config = redis.Redis.from_url(f"redis://:{PASSWORD}@127.0.0.1:{port}/0").config_get
        assert config("appendonly") == {"appendonly": "yes"}
        assert config("appendfsync") == {"appendfsync": "everysec"}
    finally:
        stop(proc)


def test_compose_gives_vllm_and_sparring_the_engine_key(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**env_file(ENV_EXAMPLE), "ENGINE_API_KEY": KEY}
    stack = compose_config("docker-compose.yml", "docker-compose.per-role.yml", env=env)
    services = stack["services"]
    for name in ("vllm", "vllm-attacker", "vllm-critic"):
        assert services[name]["environment"]["VLLM_API_KEY"] == KEY, name
        assert KEY not in json.dumps(services[name]["command"]), name
    assert services["orchestrator"]["environment"]["ENGINE_API_KEY"] == KEY
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cfg = load_config(Path(__file__).parent.parent / "configs" / "compose.yaml")
    for name, engine in cfg.engines.items():
        assert engine.api_key is not None and engine.api_key.get_secret_value() == KEY, name
