"""A local stand-in for the Hugging Face Hub API: the few endpoints huggingface_hub's HfApi calls to create
a dataset repository and commit files to it (an HTTP-boundary double, like tests/fake_teacher.py).

    POST /api/validate-yaml                              -> a README's front matter must be a YAML mapping
    POST /api/repos/create                               -> the repository's url
    POST /api/datasets/{owner}/{name}/preupload/{rev}    -> every file uploads "regular" (inline, no LFS)
    POST /api/datasets/{owner}/{name}/commit/{rev}       -> NDJSON: a header line, then one line per file

What it received is kept on the instance (`repos`, `files`, `authorizations`); `fail_with` makes every
call answer that status with a body quoting the request's Authorization header, as a careless server
might, so a test can check the token never reaches a stored error.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Any]] = {}
        self.files: dict[str, dict[str, bytes]] = {}
        self.commits: list[dict[str, Any]] = []
        self.authorizations: list[str] = []
        self.validated: list[dict[str, Any]] = []
        self.fail_with: int | None = None
        self.base_url = ""

    @classmethod
    @contextlib.contextmanager
    def start(cls) -> Iterator[FakeHub]:
        hub = cls()
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
        hub.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield hub
        finally:
            server.shutdown()
            server.server_close()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self) -> None:
            self._send(404, {"error": f"not found: {self.path}"})

        def do_POST(self) -> None:
            body = self._body()
            auth = self.headers.get("Authorization", "")
            hub.authorizations.append(auth)
            if hub.fail_with is not None:
                self._send(hub.fail_with, {"error": f"refused request with header {auth}"})
                return
            parts = self.path.split("?")[0].strip("/").split("/")
            if parts == ["api", "validate-yaml"]:
                # The Hub checks a README's front matter before a commit; so does the stand-in (YAML only).
                content = json.loads(body)["content"]
                try:
                    front = content.split("---\n", 2)[1] if content.startswith("---\n") else ""
                    meta = yaml.safe_load(front) if front else {}
                    assert isinstance(meta, dict)
                except Exception as exc:
                    self._send(400, {"error": f"Invalid metadata in README.md: {exc}"})
                    return
                hub.validated.append(meta)
                self._send(200, {"errors": [], "warnings": []})
            elif parts == ["api", "repos", "create"]:
                req = json.loads(body)
                repo_id = f"{req.get('organization') or 'me'}/{req['name']}"
                hub.repos[repo_id] = req
                hub.files.setdefault(repo_id, {})
                self._send(200, {"url": f"{hub.base_url}/datasets/{repo_id}", "name": repo_id})
            elif len(parts) == 6 and parts[:2] == ["api", "datasets"] and parts[4] == "preupload":
                files = json.loads(body)["files"]
                modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                self._send(200, {"files": modes, "commitOid": "0" * 40})
            elif len(parts) == 6 and parts[:2] == ["api", "datasets"] and parts[4] == "commit":
                repo_id = f"{parts[2]}/{parts[3]}"
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                header = next(x["value"] for x in lines if x["key"] == "header")
                stored = hub.files.setdefault(repo_id, {})
                for line in lines:
                    if line["key"] == "file":
                        stored[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                hub.commits.append({"repo_id": repo_id, **header})
                oid = f"{len(hub.commits):040x}"
                self._send(
                    200,
                    {
                        "commitUrl": f"{hub.base_url}/datasets/{repo_id}/commit/{oid}",
                        "commitOid": oid,
                        "pullRequestUrl": None,
                    },
                )
            else:
                self._send(404, {"error": f"not found: {self.path}"})

    return Handler
