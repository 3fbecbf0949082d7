"""The `respond_local` job (gpu queue): trained systems answer each record's prompt with n candidates each,
through the evaluation generator (``python -m trainer.answer``, a child process like the trainer), stored
as candidates (source ``run`` for a training run's adapter, ``base`` models too) beside the teachers'.

A system is a finished training run of the project (its adapter on its base model) or a base model under
IF_MODELS_DIR. One generator run per system answers all its samples: each prompt is sent ``n`` times (ids
``rec:<record>:s<sample>``), and sampled decoding draws each copy afresh (trainer.answer seeds batches from
``seed``); temperature 0 is greedy decoding, where ``n`` above 1 only repeats the answer (stored once).

Why a killed worker loses and repeats nothing: each system has its own folder under
``data_dir/respond/job-<id>/`` whose answers file the generator appends to and skips on a restart (see
trainer/answer.py), a generator left running by a killed worker is stopped first
(app.evaluation.jobs.stop_previous), and candidates are written by key (``respond:<job>:m<system>:<sample>``,
unique per record, insert ignoring duplicates). The empty-output rule is the respond job's
(app.generation.respond).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select

from app.config import get_settings
from app.errors import Invalid
from app.jobs.context import JobContext
from app.records.models import Record
from app.records.schemas import RecordFilter


class LocalSystem(BaseModel):
    """A trained system: a training run of the project, or a base model folder under IF_MODELS_DIR."""

    run_id: int | None = Field(None, ge=1, le=2**62, description="A finished training run of this project.")
    base_model: str | None = Field(
        None, min_length=1, max_length=500, description="A base model folder under IF_MODELS_DIR."
    )
    n: int = Field(1, ge=1, le=8, description="Candidates per prompt from this system.")
    temperature: float = Field(0.7, ge=0, le=2, description="0: greedy decoding.")
    top_p: float = Field(0.9, gt=0, le=1)
    seed: int = Field(
        0, ge=0, le=2**31 - 1, description="Seeds the sampling (reproducible for the same job)."
    )
    max_new_tokens: int = Field(256, ge=1, le=8192, description="Longest answer, in tokens.")

    @model_validator(mode="after")
    def _one_source(self) -> LocalSystem:
        if (self.run_id is None) == (self.base_model is None):
            raise ValueError("give exactly one of run_id and base_model")
        return self


class RespondLocalJobParams(BaseModel):
    """Candidate responses from trained systems (adapters of training runs, base models), on the gpu queue."""

    systems: list[LocalSystem] = Field(min_length=1, max_length=8, description="Who answers.")
    scope: RecordFilter = Field(
        default_factory=lambda: RecordFilter(status=["pending", "accepted"]),
        description="Which records to answer (default: pending and accepted).",
    )
    max_items: int = Field(100, ge=1, le=1_000_000, description="Answer at most this many records.")
    fill_empty_output: bool = Field(
        True,
        description="A record with an empty output that no person decided gets the first candidate as output.",
    )
    batch_size: int = Field(8, ge=1, le=256, description="Prompts the generator answers together.")


def gen_key(job_id: int, system: int, sample: int) -> str:
    return f"respond:{job_id}:m{system}:{sample}"


def _resolve(ctx: JobContext, s: LocalSystem) -> tuple[str | None, str | None, str, int | None]:
    """(base_model, adapter_dir, model label, training_run_id) of a system."""
    from app.jobs.models import Job
    from app.training.models import TrainingRun

    if s.run_id is None:
        return s.base_model, None, str(s.base_model), None
    with ctx.session() as db:
        run = db.get(TrainingRun, s.run_id)
        if run is None or run.project_id != ctx.project_id:
            raise Invalid(f"training run {s.run_id} not found in this project", field="params.systems")
        job = db.get(Job, run.job_id)
        if job is None or job.status != "succeeded" or not run.artifacts_dir:
            raise Invalid(f"training run {s.run_id} has not finished", field="params.systems")
        return run.base_model, run.artifacts_dir, f"run {run.id} ({run.base_model})", run.id


def _work_dir(job_id: int, system: int) -> Path:
    path = (get_settings().data_dir / "respond" / f"job-{job_id}" / f"m{system}").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _read_answers(path: Path, offset: int) -> tuple[int, list[dict[str, Any]]]:
    """The complete answer lines appended since `offset`, and the new offset."""
    if not path.is_file():
        return offset, []
    with path.open("rb") as fh:
        fh.seek(offset)
        chunk = fh.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]
    rows = []
    for line in complete.decode("utf-8", "replace").splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(item, dict):
            rows.append(item)
    return offset + len(complete), rows


def _generate(
    ctx: JobContext, out: Path, spec: dict[str, Any], store: Callable[[list[dict[str, Any]]], None]
) -> None:
    """Run the evaluation generator on `spec` in `out`, storing its answers as they are appended; a cancel
    asks it to stop (and kills it after a grace period), keeping what it answered."""
    from app.evaluation.jobs import run_answer_process, stop_previous
    from trainer.contract import ANSWERS_FILE

    stop_previous(out)
    offset = 0

    def poll() -> None:
        nonlocal offset
        offset, answers = _read_answers(out / ANSWERS_FILE, offset)
        store(answers)

    run_answer_process(out, spec, poll)


def run_respond_local_job(ctx: JobContext) -> None:
    from app.generation.jobs import scope_rows
    from app.generation.respond import _fill_output, record_item
    from app.pipeline.textnorm import normalize
    from app.preferences.models import Candidate, CandidateSource
    from app.preferences.service import add_candidate

    p = RespondLocalJobParams.model_validate(ctx.params)
    rows = scope_rows(ctx, ctx.dataset, p.scope, p.max_items)
    items = {r.id: item for r in rows if (item := record_item(r, 0)) is not None}
    if not items:
        raise Invalid("no records in the scope have a prompt to answer", field="params.scope")
    resolved = [_resolve(ctx, s) for s in p.systems]
    total = len(items) * sum(s.n for s in p.systems)
    counters: dict[str, Any] = {
        "answered": 0,
        "empty": 0,
        "duplicate": 0,
        "outputs_filled": 0,
        "no_prompt": len(rows) - len(items),
    }
    done = 0
    ctx.progress(done, total, counters=counters)

    for si, (s, (base_model, adapter_dir, label, run_id)) in enumerate(zip(p.systems, resolved, strict=True)):
        # One generator per system answers all its samples: the same prompt in other batches (and other
        # rows of a batch) draws other samples, and the model loads once.
        with ctx.session() as db:
            have = set(
                db.execute(
                    select(Candidate.record_id, Candidate.gen_key).where(Candidate.job_id == ctx.job_id)
                ).tuples()
            )
        wanted: dict[str, tuple[int, int]] = {}
        for j in range(s.n):
            for rid in items:
                if (rid, gen_key(ctx.job_id, si, j)) in have:
                    done += 1
                else:
                    wanted[f"rec:{rid}:s{j}"] = (rid, j)
        if not wanted:
            continue
        out = _work_dir(ctx.job_id, si)
        prompts = out / "prompts.jsonl"
        with prompts.open("w", encoding="utf-8") as fh:
            for pid, (rid, _) in wanted.items():
                messages = [{"role": r, "content": c} for r, c in items[rid].messages]
                fh.write(json.dumps({"id": pid, "messages": messages}, ensure_ascii=False) + "\n")
        spec = {
            "base_model": base_model,
            "models_dir": str(get_settings().models_dir.resolve()),
            "adapter_dir": adapter_dir,
            "prompts_path": str(prompts),
            "output_dir": str(out),
            "max_new_tokens": s.max_new_tokens,
            "greedy": s.temperature == 0,
            "temperature": s.temperature or 0.7,
            "top_p": s.top_p,
            "seed": s.seed,
            "batch_size": p.batch_size,
        }
        sampling = {"system": si, "temperature": s.temperature, "top_p": s.top_p, "seed": s.seed}
        sampling["max_new_tokens"] = s.max_new_tokens

        def store(
            answers: list[dict[str, Any]],
            si: int = si,
            label: str = label,
            run_id: int | None = run_id,
            wanted: dict[str, tuple[int, int]] = wanted,
            sampling: dict[str, Any] = sampling,
        ) -> None:
            nonlocal done
            with ctx.session() as db:
                for a in answers:
                    pid = str(a.get("id"))
                    if pid not in wanted:
                        continue
                    rid, j = wanted.pop(pid)
                    done += 1
                    text = str(a.get("answer") or "").strip()
                    record = db.get(Record, rid)
                    if not text or record is None:
                        counters["empty"] += 1
                        continue
                    same = {
                        normalize(c)
                        for c in db.scalars(select(Candidate.content).where(Candidate.record_id == rid))
                    }
                    if normalize(text) in same:
                        counters["duplicate"] += 1
                        continue
                    cand = add_candidate(
                        db=db,
                        record=record,
                        content=text,
                        source=CandidateSource.run.value,
                        model=label,
                        params={**sampling, "sample_index": j},
                        job_id=ctx.job_id,
                        training_run_id=run_id,
                        gen_key=gen_key(ctx.job_id, si, j),
                        meta={"tokens": a.get("tokens"), "truncated": bool(a.get("truncated"))},
                    )
                    if cand is None:
                        continue
                    counters["answered"] += 1
                    provenance = {
                        "teacher": label,
                        "model": label,
                        "job_id": ctx.job_id,
                        "candidate_id": cand.id,
                    }
                    if (
                        p.fill_empty_output
                        and not record.output.strip()
                        and _fill_output(db, record, text, provenance)
                    ):
                        counters["outputs_filled"] += 1
            ctx.progress(done, total, counters=counters)

        _generate(ctx, out, spec, store)
    ctx.set_result({"records": len(rows), "systems": len(p.systems), **counters})
