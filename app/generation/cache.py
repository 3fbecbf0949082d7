"""The database side of the teacher gateway: response cache and per-call accounting."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import func, select

from app.db import get_sessionmaker, insert_ignoring
from app.generation.models import LlmCacheEntry, LlmCall
from app.pipeline.llm import CallRecord


def _llm_call(job_id: int, c: CallRecord) -> LlmCall:
    """The ledger row of a call (the columns are CallRecord's fields)."""
    return LlmCall(job_id=job_id, **{**dataclasses.asdict(c), "error": (c.error or None) and c.error[:500]})


class DbResponseCache:
    """Responses keyed by the hash of the full request: a resumed or repeated job never pays twice.

    With a ``job_id``, each paid call's ledger row is written in the same transaction as its response, so
    a worker killed at any instant has either both (the call is replayed from the cache, and its cost
    counted once) or neither (the call is made again).
    """

    def __init__(self, job_id: int | None = None) -> None:
        self.job_id = job_id

    def get(self, key: str) -> dict[str, Any] | None:
        with get_sessionmaker()() as db:
            return db.scalar(select(LlmCacheEntry.response).where(LlmCacheEntry.key == key))

    def put(
        self, key: str, request: dict[str, Any], response: dict[str, Any], call: CallRecord | None = None
    ) -> None:
        values = {
            "key": key,
            "model": str(request.get("model", "")),
            "request": request,
            "response": response,
        }
        with get_sessionmaker()() as db:
            db.execute(insert_ignoring(db, LlmCacheEntry, index_elements=["key"]).values(**values))
            if self.job_id is not None and call is not None:
                # Even when the entry was already there (the same request in flight twice): both were paid.
                db.add(_llm_call(self.job_id, call))
            db.commit()


class CallLog:
    """A job's call ledger. Paid calls are written by its cache (``response_cache``) with their responses;
    cache hits and failed calls wait in memory until the job flushes them with its progress."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.response_cache = DbResponseCache(job_id=job_id)
        self.pending: list[CallRecord] = []

    def __call__(self, call: CallRecord) -> None:
        if call.cached or call.error is not None:
            self.pending.append(call)

    def flush(self) -> dict[str, float]:
        """Store the pending calls; return the job's totals over every attempt (paid calls only)."""
        with get_sessionmaker()() as db:
            if self.pending:
                db.add_all(_llm_call(self.job_id, c) for c in self.pending)
                db.commit()
                self.pending = []
            tin, tout, cost = db.execute(
                select(
                    func.coalesce(func.sum(LlmCall.tokens_in), 0),
                    func.coalesce(func.sum(LlmCall.tokens_out), 0),
                    func.coalesce(func.sum(LlmCall.cost_usd), 0.0),
                ).where(LlmCall.job_id == self.job_id, LlmCall.cached.is_(False))
            ).one()
        return {"tokens_in": int(tin), "tokens_out": int(tout), "cost_usd": round(float(cost), 6)}
