"""Batch mode: a job's independent teacher calls answered through OpenAI's Batch API, at batch prices.

How a job uses it (app/generation/batch_mode.py for the service's jobs, app/cli/batch.py for the CLI): on
every visit it

1. runs its pipeline once against the cache through a :class:`BatchGateway` in ``collect`` mode: a call
   the cache answers is answered; any other is *deferred* (kept in :attr:`BatchGateway.missing` and
   failed as a :class:`TeacherError`, which the pipelines treat as one item's failure, so the rest of
   the run still shows its calls). Nothing is paid and the pipeline's output is thrown away. A request
   that gave up in batches fails there as in the final pass (not deferred), and a staged pipeline
   (Self-Instruct's instances stage: classifications, then instances) marks its stages with
   :func:`end_stage`, so a pass stops at the first stage still waiting for answers: a pending call is
   never taken for a failed one, and a stage's calls are collected only from its predecessor's answers;
2. hands those requests to :meth:`BatchRunner.step`, which polls the open batch, if any, and stores its
   answers in the job's cache and ledger at batch prices; with nothing open, it submits what is still
   missing in a new batch, or several when the teacher's ``batch_max_requests`` / ``batch_max_bytes``
   (OpenAI: 50,000 requests, 200 MB) split it: a group, submitted together and collected once all of it
   has ended. An answer to a request no pass asks for any more (a person decided the record meanwhile) is
   kept in the cache and ledger all the same: the provider bills it. It says whether to wait (the job then gives its worker back, see
   app.jobs.context.JobWaiting) or go on; after new answers it asks for step 1 again, since a call that
   depends on an answer (the judge's re-ask of an unreadable score) only shows up once that answer is in;
3. when nothing is missing, runs the pipeline for real through a :class:`BatchGateway` in ``final``
   mode: every call comes from the cache, so its results are exactly the synchronous path's on the same
   answers. A request that failed in ``max_attempts`` batches fails there as a :class:`TeacherError`,
   as a call out of retries does.

Never two batches for the same calls. The state a job keeps (:class:`BatchState`, JSON) is saved through
the job's ``save`` callback before each step that could be lost: a submission is recorded under a label
(job and sequence number) *before* its file is uploaded, the file id as soon as it is known, and the
batch id once created. The batch carries the label in its metadata, so a worker killed between creating
the batch and saving its id finds it again (``batches.list``) instead of creating a second one. A file
uploaded and never used (a kill between upload and save) is the one thing that can be left behind.
Requests are matched back by ``custom_id``, which is the request's cache key (``request_key``).

Like all of ``app.pipeline``, nothing here touches the database: the cache and the saving are the
caller's.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import openai

from app.pipeline.llm.cache import ResponseCache
from app.pipeline.llm.calls import BudgetExceeded, CallRecord, Completion, TeacherError
from app.pipeline.llm.config import TeacherConfig
from app.pipeline.llm.gateway import Gateway, approx_tokens

# The provider's statuses after which a batch changes no more.
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
METADATA_LABEL = "instructforge_submission"


class Deferred(TeacherError):
    """A call left for a batch (collect mode): a TeacherError, so a pipeline goes on with its other items."""


class StagePending(Exception):
    """Raised by :func:`end_stage` in a collect pass: a stage of the pipeline has calls still unanswered,
    so the stages after it, which depend on its answers, must not be collected yet. Not a TeacherError:
    nothing in a pipeline catches it; :func:`collect_missing` does."""


def end_stage(gateway: Gateway) -> None:
    """Mark the end of a stage of a staged pipeline (Self-Instruct's classifications, then its instances).

    In a collect pass whose gateway deferred a call, stop the pass here: a deferred call would otherwise
    look like a failed one to the next stage (a pending classification is not a failed one), and the next
    stage's calls would be collected from answers that are not in yet. Anywhere else it does nothing."""
    if isinstance(gateway, BatchGateway) and gateway.mode == "collect" and gateway.missing:
        raise StagePending(f"{len(gateway.missing)} calls of this stage are waiting for a batch")


@dataclass(frozen=True)
class Pending:
    """A call the cache could not answer: the full request (as cached and hashed) and what it is for."""

    request: dict[str, Any]
    purpose: str


class BatchGateway(Gateway):
    """A gateway that never calls the teacher synchronously for a missing answer.

    ``collect``: a miss is recorded in :attr:`missing` and deferred. ``final``: any other miss (the budget
    stopped the submission) raises BudgetExceeded, so the pipeline stops as it does on a budget. In both, a
    miss whose request gave up in batches (``failed``: :meth:`BatchRunner.given_up`) fails as a plain
    TeacherError, as a call out of retries does: a collect pass then goes on past it exactly as the final
    pass will (a staged pipeline collects the next stage's calls of that item too).
    """

    def __init__(
        self,
        teacher: TeacherConfig,
        *,
        mode: Literal["collect", "final"],
        failed: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(teacher, **kwargs)
        self.mode = mode
        self.failed = dict(failed or {})
        self.missing: dict[str, Pending] = {}

    async def _call_with_retries(self, request: dict[str, Any], *, key: str, purpose: str) -> Completion:
        if key in self.failed:
            self.usage.failed_calls += 1
            self._record_error(key, purpose, self.failed[key])
            raise TeacherError(self.failed[key])
        if self.mode == "collect":
            self.missing.setdefault(key, Pending(request, purpose))
            raise Deferred(f"left for a batch: {key}")
        raise BudgetExceeded("the budget stopped the batch submission before this call")


class RememberingCache:
    """A cache in front of another that keeps the answers it has read or stored: one visit of a job runs
    its pipeline several times over the same calls (find what is missing, again after new answers, then
    for real), and each answer is then read from the database once per visit, not once per pass. Holds
    the job's answers in memory for the visit (the judge: a few hundred bytes each)."""

    def __init__(self, inner: ResponseCache) -> None:
        self.inner = inner
        self._seen: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            hit = self._seen.get(key)
        if hit is None:
            hit = self.inner.get(key)
            if hit is not None:
                with self._lock:
                    self._seen[key] = hit
        return hit

    def put(
        self, key: str, request: dict[str, Any], response: dict[str, Any], call: CallRecord | None = None
    ) -> None:
        self.inner.put(key, request, response, call)
        with self._lock:
            self._seen[key] = response


@dataclass
class Submission:
    label: str
    file_id: str | None = None
    batch_id: str | None = None
    status: str = "creating"  # creating | submitted | done
    requests: int = 0
    provider_status: str | None = None
    # Submissions made together (one group) split one set of requests by the teacher's limits: this is the
    # index of this one's part, which a restarted worker recomputes to upload the same requests.
    chunk: int = 0


@dataclass
class BatchState:
    """What a job keeps between visits (JSON through :meth:`to_json` / :meth:`from_json`)."""

    submissions: list[Submission] = field(default_factory=list)
    # Batches each unanswered request went into without an answer, and the last error: only failures are
    # kept, so the state stays small however large the job.
    failures: dict[str, int] = field(default_factory=dict)
    last_error: dict[str, str] = field(default_factory=dict)
    answered: int = 0
    cost_usd: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "submissions": [s.__dict__.copy() for s in self.submissions],
            "failures": dict(self.failures),
            "last_error": dict(self.last_error),
            "answered": self.answered,
            "cost_usd": round(self.cost_usd, 8),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> BatchState:
        data = data or {}
        return cls(
            submissions=[Submission(**s) for s in data.get("submissions", [])],
            failures={k: int(v) for k, v in (data.get("failures") or {}).items()},
            last_error=dict(data.get("last_error") or {}),
            answered=int(data.get("answered", 0)),
            cost_usd=float(data.get("cost_usd", 0.0)),
        )

    @property
    def open(self) -> Submission | None:
        return next((s for s in self.submissions if s.status != "done"), None)

    @property
    def open_all(self) -> list[Submission]:
        """The submissions not collected yet: one group, made together."""
        return [s for s in self.submissions if s.status != "done"]


@dataclass(frozen=True)
class Step:
    """What the job does next: ``wait`` (give the worker back, look again in ``seconds``), ``collect``
    (new answers are in: find what is missing again) or ``final`` (run the pipeline for real)."""

    action: Literal["wait", "collect", "final"]
    seconds: float = 0.0
    failed: Mapping[str, str] = field(default_factory=dict)
    message: str = ""


def request_body(request: Mapping[str, Any]) -> dict[str, Any]:
    """What is sent for a cached request: the same body the gateway posts (gateway.Gateway._send)."""
    body: dict[str, Any] = {"model": request["model"]}
    for name in ("temperature", "top_p", "max_tokens", "stop"):
        if request.get(name) is not None:
            body[name] = request[name]
    if request.get("extra_body"):
        body.update(request["extra_body"])
    if request["api"] == "chat":
        body["messages"] = request["messages"]
    else:
        body["prompt"] = request["prompt"]
    return body


def _endpoint(request: Mapping[str, Any]) -> Literal["/v1/chat/completions", "/v1/completions"]:
    return "/v1/chat/completions" if request["api"] == "chat" else "/v1/completions"


def _line(key: str, pending: Pending) -> str:
    """A request as one line of a batch's input file."""
    body = request_body(pending.request)
    line = {"custom_id": key, "method": "POST", "url": _endpoint(pending.request), "body": body}
    return json.dumps(line, ensure_ascii=False)


class BatchRunner:
    """Submits, polls and collects one job's batches with the official ``openai`` client (synchronous:
    a job makes a handful of these calls per visit)."""

    def __init__(
        self,
        teacher: TeacherConfig,
        *,
        job_label: str,
        cache: ResponseCache,
        save: Callable[[BatchState], None],
        state: BatchState,
        budget_left_usd: float | None = None,
        client: openai.OpenAI | None = None,
    ) -> None:
        if not teacher.batch:
            raise TeacherError(f"teacher {teacher.name!r} does not offer batches (batch: false)")
        self.teacher = teacher
        self.job_label = job_label
        self.cache = cache
        self.save = save
        self.state = state
        self.budget_left_usd = budget_left_usd
        self.client = client or openai.OpenAI(
            api_key=Gateway._api_key(teacher),
            base_url=teacher.base_url,
            timeout=teacher.timeout_s,
            max_retries=teacher.max_retries,
        )

    def close(self) -> None:
        self.client.close()

    def step(self, missing: Mapping[str, Pending]) -> Step:
        """One move towards every request of ``missing`` answered (see the module docstring).

        What is submitted together may be several batches: the teacher's ``batch_max_requests`` and
        ``batch_max_bytes`` (OpenAI: 50,000 requests, 200 MB) split it, and the group is collected once
        every batch of it has ended."""
        failed = {k: self.state.last_error.get(k, "batch failed") for k in missing if self._gave_up(k)}
        todo = self._within_budget({k: p for k, p in missing.items() if k not in failed})
        open_ = self.state.open_all
        creating = [s for s in open_ if s.status == "creating"]
        if creating:
            # Killed while submitting: a batch may exist already; _create looks for it first.
            chunks = self.chunks(todo or missing)
            for sub in creating:
                self._create(sub, chunks[sub.chunk] if sub.chunk < len(chunks) else {})
            return Step("wait", self.teacher.batch_poll_s, message=self._submitted(open_))
        if open_:
            batches = []
            for sub in open_:
                assert sub.batch_id is not None
                batch = self.client.batches.retrieve(sub.batch_id)
                sub.provider_status = batch.status
                batches.append(batch)
            running = [b for b in batches if b.status not in TERMINAL]
            if running:
                self.save(self.state)
                shown = ", ".join(f"{b.id} {b.status}" for b in running)
                return Step("wait", self.teacher.batch_poll_s, message=f"batch {shown}")
            self._collect(open_, batches, missing, todo)
            return Step("collect")
        if not todo:
            # Every given-up request, not only those this pass asked: a collect pass given them fails them
            # itself (they are not in ``missing`` then), and the final pass must fail them the same way.
            return Step("final", failed={**self.given_up(), **failed})
        first = len(self.state.submissions)
        chunks = self.chunks(todo)
        subs = [
            Submission(label=f"{self.job_label}-s{first + n}", requests=len(chunk), chunk=n)
            for n, chunk in enumerate(chunks)
        ]
        self.state.submissions.extend(subs)
        self.save(self.state)  # the labels first: a kill from here on finds their batches by them
        for sub, chunk in zip(subs, chunks, strict=True):
            self._create(sub, chunk)
        return Step("wait", self.teacher.batch_poll_s, message=self._submitted(subs))

    @staticmethod
    def _submitted(subs: list[Submission]) -> str:
        return f"batch {', '.join(str(s.batch_id) for s in subs)} submitted"

    def chunks(self, todo: Mapping[str, Pending]) -> list[dict[str, Pending]]:
        """``todo`` in order, cut into batches of at most ``batch_max_requests`` requests and
        ``batch_max_bytes`` bytes of input file each (a request alone over the size still goes alone)."""
        out: list[dict[str, Pending]] = []
        current: dict[str, Pending] = {}
        size = 0
        for key, pending in todo.items():
            line = len(_line(key, pending).encode("utf-8")) + 1
            full = (
                len(current) >= self.teacher.batch_max_requests or size + line > self.teacher.batch_max_bytes
            )
            if current and full:
                out.append(current)
                current, size = {}, 0
            current[key] = pending
            size += line
        if current:
            out.append(current)
        return out

    def _gave_up(self, key: str) -> bool:
        return self.state.failures.get(key, 0) >= self.teacher.batch_max_attempts

    def given_up(self) -> dict[str, str]:
        """The requests that failed in ``batch_max_attempts`` batches, with their last error: never submitted
        again; the passes (collect and final) fail them as a call out of retries fails."""
        return {
            k: self.state.last_error.get(k, "batch failed")
            for k, n in self.state.failures.items()
            if n >= self.teacher.batch_max_attempts
        }

    def _within_budget(self, todo: dict[str, Pending]) -> dict[str, Pending]:
        """The requests, in order, whose worst-case cost at batch prices the budget still covers."""
        if self.budget_left_usd is None:
            return todo
        left = self.budget_left_usd
        kept: dict[str, Pending] = {}
        for key, pending in todo.items():
            r = pending.request
            tokens_in = approx_tokens(json.dumps(r.get("messages") or r.get("prompt"), ensure_ascii=False))
            cost = self._cost(tokens_in, int(r.get("max_tokens") or 0))
            if cost > left:
                break
            left -= cost
            kept[key] = pending
        return kept

    def _cost(self, tokens_in: int, tokens_out: int) -> float:
        pin, pout = self.teacher.batch_prices
        return tokens_in * pin / 1000 + tokens_out * pout / 1000

    def _create(self, sub: Submission, todo: Mapping[str, Pending]) -> None:
        """Create the batch of ``sub`` unless it exists: found by its label after a kill, never twice."""
        existing = self._find(sub.label)
        if existing is not None:
            sub.batch_id, sub.file_id = existing.id, existing.input_file_id
        else:
            if not todo and sub.file_id is None:
                sub.status = "done"  # nothing is left for it to ask (its part was answered meanwhile)
                self.save(self.state)
                return
            if sub.file_id is None:
                lines = [_line(key, p) for key, p in todo.items()]
                uploaded = self.client.files.create(
                    file=(f"{sub.label}.jsonl", ("\n".join(lines) + "\n").encode("utf-8")), purpose="batch"
                )
                sub.file_id = uploaded.id
                self.save(self.state)
            batch = self.client.batches.create(
                input_file_id=sub.file_id,
                endpoint=_endpoint({"api": self.teacher.api}),
                completion_window="24h",
                metadata={METADATA_LABEL: sub.label},
            )
            sub.batch_id = batch.id
        sub.status = "submitted"
        self.save(self.state)

    def _find(self, label: str) -> Any:
        for batch in self.client.batches.list(limit=100):
            if (batch.metadata or {}).get(METADATA_LABEL) == label:
                return batch
        return None

    def _collect(
        self,
        subs: list[Submission],
        batches: list[Any],
        missing: Mapping[str, Pending],
        todo: Mapping[str, Pending],
    ) -> None:
        """Store every answer of a finished group of batches in the cache and ledger at batch prices; count
        a failure for each request of ``missing`` they were asked and left unanswered (errors, expiry,
        cancellation). A request that was not in them (the budget held it back) counts nothing.

        What a batch was asked is read from its output and error files (OpenAI writes every request of an
        ended batch to one of them, expired and cancelled ones to the error file), not from its input
        file, which the provider may not let us download. A batch that ended with neither file (failed
        validation, cancelled before it ran) was asked its part of ``todo``: what this step would submit
        again, the same requests since nothing was answered meanwhile."""
        answered: set[str] = set()
        kept_unasked: set[str] = set()
        asked: set[str] = set()
        errors: dict[str, str] = {}
        parts = self.chunks(todo)
        for sub, batch in zip(subs, batches, strict=True):
            seen: set[str] = set()
            if batch.output_file_id:
                for line in self._lines(batch.output_file_id):
                    key = str(line.get("custom_id"))
                    seen.add(key)
                    response = line.get("response") or {}
                    ok = response.get("status_code") == 200 and isinstance(response.get("body"), dict)
                    if key in answered or key in kept_unasked:
                        continue  # a duplicate line
                    if key not in missing:
                        # No longer asked (a person decided the record while the batch was out): the
                        # provider bills it all the same, so the answer and its cost are kept.
                        if ok:
                            self._keep(key, Pending({"api": self.teacher.api}, "unasked"), response["body"])
                            kept_unasked.add(key)
                        continue
                    if ok:
                        self._keep(key, missing[key], response["body"])
                        answered.add(key)
                    else:
                        body = str(response.get("body"))[:200]
                        errors[key] = f"batch: HTTP {response.get('status_code')}: {body}"
            if batch.error_file_id:
                for line in self._lines(batch.error_file_id):
                    key = str(line.get("custom_id"))
                    seen.add(key)
                    response = line.get("response") or {}
                    error = line.get("error") or response.get("body") or {}
                    status = f"HTTP {response['status_code']}: " if response.get("status_code") else ""
                    text = json.dumps(error, ensure_ascii=False)[:300]
                    errors[key] = f"batch {batch.id}: {status}{text}"
            if not batch.output_file_id and not batch.error_file_id:
                seen = set(parts[sub.chunk]) if sub.chunk < len(parts) else set(todo)
            asked |= seen
            for key in seen:
                errors.setdefault(key, f"batch {batch.id} {batch.status} without it")
        unanswered = [k for k in missing if k in asked and k not in answered and not self._gave_up(k)]
        for key in unanswered:
            self.state.failures[key] = self.state.failures.get(key, 0) + 1
            self.state.last_error[key] = errors[key]
        for key in answered:
            self.state.failures.pop(key, None)
            self.state.last_error.pop(key, None)
        for sub in subs:
            sub.status = "done"
        self.save(self.state)

    def _lines(self, file_id: str) -> list[dict[str, Any]]:
        text = self.client.files.content(file_id).text
        rows = []
        for raw in text.splitlines():
            if raw.strip():
                try:
                    rows.append(json.loads(raw))
                except json.JSONDecodeError:
                    continue  # a line we cannot read is an unanswered request: it is asked again
        return rows

    def _keep(self, key: str, pending: Pending, body: Mapping[str, Any]) -> None:
        chat = pending.request["api"] == "chat"
        choices = body.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
        usage = body.get("usage") or {}
        if usage.get("prompt_tokens") is not None and usage.get("completion_tokens") is not None:
            tokens_in, tokens_out = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
        else:
            r = pending.request
            tokens_in = approx_tokens(json.dumps(r.get("messages") or r.get("prompt")))
            tokens_out = approx_tokens(str(text or ""))
        cost = self._cost(tokens_in, tokens_out)
        finish = choice.get("finish_reason")
        finish_reason = None if finish is None else str(finish)
        response = {
            "text": str(text or ""),
            "finish_reason": finish_reason,
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
        }
        call = CallRecord(
            key=key,
            purpose=f"{pending.purpose}.batch",
            model=self.teacher.model,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            latency_ms=0.0,
            cost_usd=cost,
            finish_reason=finish_reason,
            cached=False,
            error=None,
        )
        self.cache.put(key, pending.request, response, call)
        self.state.answered += 1
        self.state.cost_usd += cost
        if self.budget_left_usd is not None:
            # The next submission of this visit must see what this batch cost (the next visit reads it
            # from the ledger).
            self.budget_left_usd -= cost


def collect_missing(
    teacher: TeacherConfig,
    pipeline: Callable[[Gateway], Any],
    *,
    cache: ResponseCache,
    failed: Mapping[str, str] | None = None,
) -> dict[str, Pending]:
    """Run ``pipeline`` (an async function of a gateway) against the cache; the requests it could not
    get from it, in the order it asked for them. ``failed``: the requests given up in batches
    (:meth:`BatchRunner.given_up`), failed as in the final pass rather than deferred. A staged pipeline's
    pass stops at the first stage with calls missing (:func:`end_stage`): those are its missing calls."""

    async def go() -> dict[str, Pending]:
        gateway = BatchGateway(teacher, mode="collect", failed=failed, cache=cache)
        try:
            await pipeline(gateway)
        except StagePending:
            pass
        finally:
            await gateway.aclose()
        return gateway.missing

    from app.pipeline.llm.loop import run_coroutine

    return run_coroutine(go())


__all__ = [
    "BatchGateway",
    "BatchRunner",
    "BatchState",
    "Deferred",
    "Pending",
    "RememberingCache",
    "StagePending",
    "Step",
    "Submission",
    "collect_missing",
    "end_stage",
    "request_body",
]
