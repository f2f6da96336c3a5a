"""A message that names an engine or Redis URL never shows its password:
waiting for an engine, an engine that gives no text, a vLLM admin error, a
Redis that does not answer or refuses the login."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from sparring.bus import BusError
from sparring.bus.redis import RedisBus
from sparring.cli import main
from sparring.config import EngineConfig
from sparring.llm import Binding, NoTextError, OpenAIChat
from sparring.process import free_port
from sparring.serving.engine import EngineError, wait_for_engine
from sparring.serving.vllm import VLLMAdmin, VLLMError

SECRET = "pw-Tq7Kx2"


def _shown(text: str) -> None:
    assert SECRET not in text, text
    assert "***" in text, text


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.endswith("/chat/completions"):
            self._send(
                200,
                {
                    "id": "c",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "m",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "length",
                            "message": {"role": "assistant", "content": None},
                        }
                    ],
                },
            )
        else:
            self._send(400, {"error": {"message": "adapter not found"}})


@pytest.fixture
def engine_url() -> Iterator[str]:
    """A server that answers every chat with no text and every admin call with 400,
    reached through a URL that carries a password."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://user:{SECRET}@127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_waiting_for_an_engine_that_never_answers_hides_the_password() -> None:
    url = f"http://user:{SECRET}@127.0.0.1:{free_port()}/v1"
    cfg = EngineConfig(kind="vllm", managed=False, base_url=url, startup_timeout_s=0.2)
    with pytest.raises(EngineError) as err:
        asyncio.run(wait_for_engine("e", cfg, poll_s=0.05))
    _shown(str(err.value))


def test_an_engine_that_gives_no_text_is_named_without_the_password(engine_url: str) -> None:
    chat = OpenAIChat(timeout_s=10)
    ask = chat(
        Binding("critic", engine_url, "m"),
        [{"role": "user", "content": "hi"}],
        temperature=0.0,
        max_tokens=8,
    )
    with pytest.raises(NoTextError) as err:
        asyncio.run(ask)
    _shown(str(err.value))


def test_a_vllm_admin_error_names_the_url_without_the_password(engine_url: str) -> None:
    async def load() -> None:
        async with httpx.AsyncClient() as client:
            await VLLMAdmin(client, engine_url).load_lora_adapter("v1", "/x")

    with pytest.raises(VLLMError) as err:
        asyncio.run(load())
    _shown(str(err.value))
    assert "adapter not found" in str(err.value)


def test_a_redis_that_does_not_answer_is_one_line_without_the_password() -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    with pytest.raises(BusError) as err:
        RedisBus(url, connect_timeout_s=0.2)
    _shown(str(err.value))
    assert "no Redis answers" in str(err.value) and "bus.redis_url" in str(err.value)


def test_a_redis_that_refuses_the_password_is_one_line_without_it(redis_url: str) -> None:
    host = redis_url.removeprefix("redis://")
    with pytest.raises(BusError) as err:  # the test server has no password: AUTH fails
        RedisBus(f"redis://user:{SECRET}@{host}")
    _shown(str(err.value))
    assert "refused the login" in str(err.value)


def test_review_of_a_run_whose_redis_is_down_prints_one_masked_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"bus": {"redis_url": url}}))
    result = CliRunner().invoke(main, ["review", str(run_dir), "--list"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("Error")]
    _shown(line)
