"""Where teacher answers are kept, so the same request is never paid for twice.

The key is the full request (:func:`request_key`): model, prompt, every sampling parameter and the sample
index. Asking again for the same thing replays the kept answer; changing anything, including asking for a
second sample of the same prompt, is a new call. A resumed or repeated job therefore pays only for
requests not answered before (the job's cache is ``app/generation/cache.py``), and a JSONL file replays a
whole CLI run offline.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from app.pipeline.llm.calls import CallRecord


class ResponseCache(Protocol):
    """Where teacher responses are kept, keyed by :func:`request_key`. Sync: called via a thread."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(
        self, key: str, request: dict[str, Any], response: dict[str, Any], call: CallRecord | None = None
    ) -> None:
        """Keep ``response``; ``call`` is the paid call that got it, for caches that also keep the ledger
        (the job's database cache stores both in one transaction, so a killed worker loses neither)."""
        ...


def request_key(request: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the full request: model, prompt, all sampling, sample index."""
    canonical = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class InMemoryCache:
    """A dict behind a lock (the gateway calls caches from worker threads); lives as long as the process."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._data.get(key)

    def put(
        self, key: str, request: dict[str, Any], response: dict[str, Any], call: CallRecord | None = None
    ) -> None:
        with self._lock:
            self._data[key] = response

    def __len__(self) -> int:
        return len(self._data)


class JsonlFileCache:
    """Append-only JSONL file: one ``{"key", "request", "response"}`` per line; replays a run offline."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._data: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            with self.path.open(encoding="utf-8") as fh:
                for line in fh:
                    # A process killed mid-write leaves a partial last line: that one call is simply redone.
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    self._data[row["key"]] = row["response"]

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._data.get(key)

    def put(
        self, key: str, request: dict[str, Any], response: dict[str, Any], call: CallRecord | None = None
    ) -> None:
        line = json.dumps({"key": key, "request": request, "response": response}, ensure_ascii=False)
        with self._lock:
            self._data[key] = response
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    def __len__(self) -> int:
        return len(self._data)
