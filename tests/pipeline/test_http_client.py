"""The aiohttp sender under the openai client (app/pipeline/llm/http_client.py): what httpx2 did, it still does."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import openai
import pytest

from app.pipeline.llm import Gateway, TeacherConfig, TeacherError
from app.pipeline.llm.http_client import AiohttpSendClient

ANSWER = {
    "id": "x",
    "object": "chat.completion",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Tides follow the moon."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 4},
}


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).seen.append(
            {
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": json.loads(body),
            }
        )
        payload = gzip.compress(json.dumps(ANSWER).encode())
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: ClassVar[list[dict[str, Any]]] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _ask(teacher: TeacherConfig) -> str:
    async def go() -> str:
        async with Gateway(teacher) as gateway:
            return (await gateway.complete("Explain tides.", purpose="test")).text

    return asyncio.run(go())


def test_sdk_headers_and_body_go_out_and_a_gzip_answer_is_decoded(
    recorder: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen = recorder
    monkeypatch.setenv("IF_TEST_TEACHER_KEY", "sk-test-123")
    teacher = TeacherConfig(name="t", base_url=f"{url}/v1", model="m", api_key_env="IF_TEST_TEACHER_KEY")
    assert teacher.transport == "aiohttp"
    assert _ask(teacher) == "Tides follow the moon."
    [request] = seen
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == "Bearer sk-test-123"
    assert request["headers"]["content-type"] == "application/json"
    assert request["headers"]["user-agent"].endswith("OpenAI/Python " + openai.__version__)
    assert request["body"]["model"] == "m"
    assert request["body"]["messages"] == [{"role": "user", "content": "Explain tides."}]


def test_proxy_from_the_environment_is_used_unless_no_proxy_names_the_host(
    recorder: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, seen = recorder
    nobody = f"http://127.0.0.1:{_dead_port()}/v1"  # only reachable through the "proxy"
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", proxy)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    teacher = TeacherConfig(name="t", base_url=nobody, model="m", max_retries=0)
    assert _ask(teacher) == "Tides follow the moon."
    assert seen[0]["path"] == f"{nobody}/chat/completions"  # absolute URI: it was a proxied request

    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with pytest.raises(TeacherError, match="APIConnectionError"):
        _ask(teacher)
    assert len(seen) == 1


def test_httpx_transport_remains_available(recorder: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = recorder
    teacher = TeacherConfig(name="t", base_url=f"{url}/v1", model="m", transport="httpx")
    assert _ask(teacher) == "Tides follow the moon."
    assert seen[0]["path"] == "/v1/chat/completions"


def test_a_streamed_request_goes_through_httpx2_own_transport_made_on_first_use(
    recorder: tuple[str, list[dict[str, Any]]],
) -> None:
    url, seen = recorder

    async def go() -> tuple[bool, bytes, bool]:
        client = AiohttpSendClient(max_connections=2, timeout_s=10)
        made_before = client._transport._inner is not None  # type: ignore[attr-defined]
        async with client.stream("POST", f"{url}/v1/chat/completions", json={"model": "m"}) as answer:
            body = await answer.aread()
        made_after = client._transport._inner is not None  # type: ignore[attr-defined]
        await client.aclose()
        return made_before, body, made_after

    made_before, body, made_after = asyncio.run(go())
    assert not made_before and made_after
    assert json.loads(body)["choices"][0]["message"]["content"] == "Tides follow the moon."
    assert seen[0]["body"] == {"model": "m"}
