"""Evaluations: a project's list, the new-evaluation form, and an evaluation's page (its progress, win rates with
their intervals per pair and per category, lengths and the length-controlled figure, validation loss,
decontamination, then prompt by prompt the two answers and the judge's rationale in both orders).

Everything is read and written through app.evaluation's services; the results are the stored
app.pipeline.pairwise summaries (docs/evaluation.md says what each figure means)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from app.auth.models import Role, User
from app.base import utcnow
from app.datasets import service as datasets
from app.deps import SessionDep
from app.errors import DomainError, Invalid, validation_message
from app.evaluation import ablations
from app.evaluation import service as evaluations
from app.evaluation.schemas import AblationCreate, EvaluationCreate
from app.generation import service as generation
from app.jobs.models import ACTIVE_STATUSES
from app.pipeline.prompts import load_prompt
from app.projects import service as projects
from app.snapshots import service as snapshots
from app.ui import jobview
from app.ui.charts import rate_chart
from app.ui.web import CheckedForm, HtmlRoute, PageUser, redirect, render

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)

SYSTEM_ROWS = 4  # systems offered on the form; the API takes any number
# share_a_longer at or beyond these: one system is the longer one on (almost) every prompt, so the
# length-controlled figure has no equal-length comparisons to learn from (docs/evaluation.md).
EXTRAPOLATION = (0.1, 0.9)
OUTCOME_WORDS = {
    "win": "wins",
    "tie": "ties",
    "loss": "losses",
    "unparseable": "unreadable verdicts",
    "error": "teacher errors",
    "pending": "not judged yet",
}


def default_rubric(language: str = "en") -> str:
    return load_prompt("pairwise_rubric", language).template.strip()


# --------------------------------------------------------------------------------------------------
# The list and the form


@dataclass
class Options:
    """What the form offers: systems (base models, the project's succeeded runs, teachers) and prompt sets."""

    systems: list[tuple[str, str, bool]] = field(default_factory=list)  # value, label, usable
    prompt_sets: list[tuple[str, str]] = field(default_factory=list)
    teachers: list[str] = field(default_factory=list)
    teacher_note: str = ""


def _options(db: Session, user: User, project_id: int) -> Options:
    from app.training import service as training

    opts = Options()
    for m in training.base_models():
        opts.systems.append(
            (f"base:{m.name}", f"base model {m.name}" + ("" if m.ok else f" — refused: {m.reason}"), m.ok)
        )
    for run, job in training.list_runs(db=db, user=user, project_id=project_id):
        ok = job.status == "succeeded"
        state = "" if ok else f" — {job.status}, no adapter"
        opts.systems.append(
            (
                f"run:{run.id}",
                f"training run {run.id} ({run.base_model} on snapshot {run.snapshot_id}){state}",
                ok,
            )
        )
    try:
        opts.teachers = [t.name for t in generation.list_teachers(user=user)]
    except Invalid as exc:
        opts.teacher_note = exc.message
    if not opts.teachers and not opts.teacher_note:
        opts.teacher_note = (
            "No teacher is configured: set IF_TEACHERS (see docs/teachers.md). The judge is a teacher."
        )
    opts.systems += [(f"teacher:{t}", f"teacher {t}", True) for t in opts.teachers]
    for d in datasets.list_datasets(db=db, user=user, project_id=project_id):
        opts.prompt_sets.append((f"dataset:{d.id}", f"dataset {d.name} (all its records, as they are now)"))
        for s in snapshots.list_snapshots(db=db, user=user, dataset_id=d.id):
            opts.prompt_sets.append(
                (f"snapshot:{s.id}", f"snapshot {s.name} of {d.name} ({s.record_count} records)")
            )
    return opts


def _int_or_none(raw: str, name: str, label: str) -> int | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise Invalid(f"{label}: {raw!r} is not a whole number", field=name) from None


def _systems(form: FormData) -> tuple[list[dict[str, Any]], list[int]]:
    """The chosen systems, and for each the form row it came from (errors name the row)."""
    chosen: list[dict[str, Any]] = []
    rows: list[int] = []
    for i in range(SYSTEM_ROWS):
        value = str(form.get(f"system_{i}", "")).strip()
        if not value:
            continue
        kind, _, ref = value.partition(":")
        name = str(form.get(f"system_name_{i}", "")).strip() or None
        spec: dict[str, Any] = {"kind": kind, "name": name}
        if kind == "base":
            spec["base_model"] = ref
        elif kind == "run":
            spec["training_run_id"] = _int_or_none(ref, f"system_{i}", f"System {i + 1}")
        elif kind == "teacher":
            spec["teacher"] = ref
        else:
            raise Invalid(f"System {i + 1}: unknown system {value!r}", field=f"system_{i}")
        chosen.append(spec)
        rows.append(i)
    return chosen, rows


def _prompt_set(form: FormData) -> dict[str, Any]:
    kind, _, ref = str(form.get("prompt_set", "")).partition(":")
    if kind not in ("dataset", "snapshot"):
        raise Invalid("Prompt set: choose a dataset or a snapshot", field="prompt_set")
    return {f"{kind}_id": _int_or_none(ref, "prompt_set", "Prompt set")}


def _body(form: FormData) -> tuple[dict[str, Any], list[int]]:
    """The posted form as the API's body; blank optional fields are left to their defaults."""
    systems, rows = _systems(form)
    text = {k: str(form.get(k, "")).strip() for k in form.keys()}  # noqa: SIM118 (FormData, not a dict)
    body: dict[str, Any] = {"systems": systems, **_prompt_set(form)}
    for key in ("name", "split", "val_fraction", "seed", "max_prompts", "judge_teacher", "budget_usd"):
        if text.get(key):
            body[key] = text[key]
    rubric = str(form.get("rubric", "")).strip()
    body["rubric"] = None if rubric in ("", default_rubric("en"), default_rubric("zh")) else rubric
    body["scores"] = form.get("scores") == "on"
    body["use_reference"] = form.get("use_reference") == "on"
    generation_params: dict[str, Any] = {"greedy": form.get("greedy") == "on"}
    for key in ("max_new_tokens", "temperature", "top_p", "batch_size"):
        if text.get(key):
            generation_params[key] = text[key]
    if text.get("gen_seed"):
        generation_params["seed"] = text["gen_seed"]
    body["generation"] = generation_params
    return body, rows


def _in_words(exc: Invalid, rows: list[int]) -> Invalid:
    """A service error about `systems.N...` says which row of the form it is about."""
    where = str(exc.detail.get("field") or "")
    parts = where.split(".")
    if len(parts) >= 2 and parts[0] == "systems" and parts[1].isdigit() and int(parts[1]) < len(rows):
        row = rows[int(parts[1])]
        return Invalid(f"System {row + 1}: {exc.message}", field=f"system_{row}")
    return exc


def create_from_form(db: Session, user: User, form: FormData) -> Any:
    """The evaluation the form describes, created and queued; Invalid naming the field otherwise."""
    body, rows = _body(form)
    try:
        create = EvaluationCreate.model_validate(body)
    except ValidationError as exc:
        first = ".".join(str(p) for p in exc.errors()[0].get("loc", ()))
        raise _in_words(Invalid(validation_message(exc.errors()), field=first), rows) from None
    try:
        return evaluations.create_evaluation(db=db, user=user, body=create)
    except Invalid as exc:
        raise _in_words(exc, rows) from None


def estimate_from_form(db: Session, user: User, form: FormData) -> JSONResponse:
    """The cost of the evaluation the form describes, as JSON for the form's Estimate button (nothing is
    stored); a refusal is JSON too, naming the field as Start would."""
    body, rows = _body(form)
    try:
        create = EvaluationCreate.model_validate(body)
        estimate = evaluations.estimate_evaluation(db=db, user=user, body=create)
    except ValidationError as exc:
        first = ".".join(str(p) for p in exc.errors()[0].get("loc", ()))
        error = _in_words(Invalid(validation_message(exc.errors()), field=first), rows)
        return JSONResponse({"detail": error.message, "field": error.detail.get("field")}, status_code=422)
    except DomainError as exc:
        refused: DomainError = _in_words(exc, rows) if isinstance(exc, Invalid) else exc
        return JSONResponse(
            {"detail": refused.message, "field": refused.detail.get("field")}, status_code=refused.status_code
        )
    return JSONResponse(estimate.model_dump(mode="json"))


def _form_page(
    request: Request,
    db: Session,
    user: User,
    project_id: int,
    form: FormData | None = None,
    error: Invalid | None = None,
) -> Response:
    project = projects.require_project(db=db, user=user, project_id=project_id, min_role=Role.curator.value)
    posted = {k: str(v) for k, v in form.items()} if form is not None else {}
    return render(
        request,
        "evaluation_form.html",
        user,
        status_code=error.status_code if error else 200,
        project=project,
        options=_options(db, user, project_id),
        rows=SYSTEM_ROWS,
        posted=posted,
        was_posted=form is not None,
        rubric=posted.get("rubric") or default_rubric("en"),
        error=error.message if error else None,
        error_field=str(error.detail.get("field") or "") if error else "",
    )


def _list_page(request: Request, db: Session, user: User, project_id: int) -> Response:
    project = projects.require_project(db=db, user=user, project_id=project_id)
    rows = evaluations.list_evaluations(db=db, user=user, project_id=project_id)
    items = [(e, j, evaluations.systems_of(db=db, evaluation_id=e.id), headline(e.results)) for e, j in rows]
    return render(request, "evaluations.html", user, project=project, items=items, active=ACTIVE_STATUSES)


def headline(results: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The overall win rate of each pair (no category), as the list shows it."""
    rates = ((results or {}).get("pairwise") or {}).get("win_rates") or []
    return [r for r in rates if r.get("category") is None]


@router.get("/ui/projects/{project_id}/evaluations")
def evaluations_page(request: Request, project_id: int, user: PageUser, db: SessionDep) -> Response:
    """The project's evaluations, newest first, with their status and overall win rates."""
    return _list_page(request, db, user, project_id)


@router.get("/ui/projects/{project_id}/evaluations/new")
def evaluation_form(request: Request, project_id: int, user: PageUser, db: SessionDep) -> Response:
    return _form_page(request, db, user, project_id)


@router.post("/ui/projects/{project_id}/evaluations/new")
def evaluation_create(
    request: Request, project_id: int, form: CheckedForm, user: PageUser, db: SessionDep
) -> Response:
    projects.require_project(db=db, user=user, project_id=project_id, min_role=Role.curator.value)
    try:
        evaluation = create_from_form(db, user, form)
    except Invalid as exc:
        return _form_page(request, db, user, project_id, form, exc)
    return redirect(f"/ui/evaluations/{evaluation.id}", f"evaluation {evaluation.id} queued")


@router.post("/ui/projects/{project_id}/evaluations/new/estimate")
def evaluation_estimate(project_id: int, form: CheckedForm, user: PageUser, db: SessionDep) -> Response:
    """The form's Estimate button: judge and teacher calls, tokens and cost; nothing is started."""
    projects.require_project(db=db, user=user, project_id=project_id, min_role=Role.curator.value)
    return estimate_from_form(db, user, form)


# --------------------------------------------------------------------------------------------------
# Compare snapshots (an ablation)


def _snapshot_choices(db: Session, user: User, project_id: int) -> list[tuple[int, str]]:
    return [
        (s.id, f"{s.name} of {d.name} ({s.record_count} records)")
        for d in datasets.list_datasets(db=db, user=user, project_id=project_id)
        for s in snapshots.list_snapshots(db=db, user=user, dataset_id=d.id)
    ]


def ablation_from_form(db: Session, user: User, form: FormData) -> Any:
    """The ablation the form describes, queued; Invalid naming the field otherwise."""
    import json

    text = {k: str(form.get(k, "")).strip() for k in form.keys()}  # noqa: SIM118 (FormData, not a dict)
    try:
        hyperparameters = json.loads(text.get("hyperparameters") or "{}")
    except json.JSONDecodeError as exc:
        raise Invalid(f"hyperparameters: not JSON ({exc.msg})", field="hyperparameters") from None
    body: dict[str, Any] = {
        "snapshot_ids": [
            _int_or_none(str(v), "snapshot_ids", "Snapshots") for v in form.getlist("snapshot_ids")
        ],
        "hyperparameters": hyperparameters,
        "include_base": form.get("include_base") == "on",
        "generation": {k: text[k] for k in ("max_new_tokens",) if text.get(k)},
        **_prompt_set(form),
    }
    for key in ("name", "base_model", "method", "split", "max_prompts", "judge_teacher"):
        if text.get(key):
            body[key] = text[key]
    try:
        create = AblationCreate.model_validate(body)
    except ValidationError as exc:
        first = ".".join(str(p) for p in exc.errors()[0].get("loc", ()))
        raise Invalid(validation_message(exc.errors()), field=first) from None
    return ablations.create_ablation(db=db, user=user, body=create)


def _ablation_page(
    request: Request,
    db: Session,
    user: User,
    project_id: int,
    form: FormData | None = None,
    error: Invalid | None = None,
) -> Response:
    from app.training import service as training

    project = projects.require_project(db=db, user=user, project_id=project_id, min_role=Role.curator.value)
    posted = {k: str(v) for k, v in form.items()} if form is not None else {}
    return render(
        request,
        "ablation_form.html",
        user,
        status_code=error.status_code if error else 200,
        project=project,
        options=_options(db, user, project_id),
        snapshots=_snapshot_choices(db, user, project_id),
        chosen={str(v) for v in form.getlist("snapshot_ids")} if form is not None else set(),
        models=[m for m in training.base_models() if m.ok],
        posted=posted,
        was_posted=form is not None,
        error=error.message if error else None,
        error_field=str(error.detail.get("field") or "") if error else "",
    )


@router.get("/ui/projects/{project_id}/evaluations/ablation")
def ablation_form(request: Request, project_id: int, user: PageUser, db: SessionDep) -> Response:
    """Compare snapshots: train them the same way, then evaluate the runs (and the base)."""
    return _ablation_page(request, db, user, project_id)


@router.post("/ui/projects/{project_id}/evaluations/ablation")
def ablation_create(
    request: Request, project_id: int, form: CheckedForm, user: PageUser, db: SessionDep
) -> Response:
    projects.require_project(db=db, user=user, project_id=project_id, min_role=Role.curator.value)
    try:
        out = ablation_from_form(db, user, form)
    except Invalid as exc:
        return _ablation_page(request, db, user, project_id, form, exc)
    return redirect(
        f"/ui/evaluations/{out.evaluation_id}", f"ablation queued: evaluation {out.evaluation_id}"
    )


# --------------------------------------------------------------------------------------------------
# An evaluation's page


@dataclass
class PairReport:
    """One pair of systems: the overall figures, per category, and the length-controlled reading."""

    a: str
    b: str
    overall: dict[str, Any] | None
    categories: list[dict[str, Any]]
    extrapolated: bool


def _pairs(pairwise: dict[str, Any]) -> list[PairReport]:
    out: dict[tuple[str, str], PairReport] = {}
    for r in pairwise.get("win_rates") or []:
        key = (str(r.get("system_a")), str(r.get("system_b")))
        pair = out.setdefault(key, PairReport(key[0], key[1], None, [], False))
        if r.get("category") is None:
            pair.overall = r
            share = r.get("share_a_longer")
            pair.extrapolated = isinstance(share, int | float) and not (
                EXTRAPOLATION[0] < share < EXTRAPOLATION[1]
            )
        else:
            pair.categories.append(r)
    return list(out.values())


def report(results: dict[str, Any] | None) -> dict[str, Any]:
    """The stored results as the page shows them: charts, tables and warnings."""
    results = results or {}
    pairwise = results.get("pairwise") or {}
    pairs = _pairs(pairwise)
    overall = [(f"{p.a} vs {p.b}", p.overall) for p in pairs if p.overall is not None]
    lengths = pairwise.get("lengths") or []
    clean = _pairs(results.get("pairwise_without_leaked") or {})
    return {
        "done": bool(pairwise),
        "pairs": pairs,
        "chart": rate_chart("Win rate of the first system, with its 95% interval", overall),
        "category_charts": [
            (p, rate_chart(f"{p.a} vs {p.b} by category", [(str(c["category"]), c) for c in p.categories]))
            for p in pairs
            if p.categories
        ],
        "lengths": [row for row in lengths if row.get("category") is None],
        "category_lengths": [row for row in lengths if row.get("category") is not None],
        "clean": [(p, p.overall) for p in clean if p.overall is not None],
        "validation": results.get("validation") or {},
        "decontamination": results.get("decontamination") or {},
        "scores": results.get("scores") or [],
        "judging": jobview.rows((results.get("judging") or {}).get("pairwise")),
        "prompts": results.get("prompts"),
        "confidence": pairwise.get("confidence"),
        "resamples": pairwise.get("resamples"),
    }


@dataclass(frozen=True)
class Filters:
    pair: int = 0
    outcome: str = ""
    category: str = ""
    offset: int = 0


OUTCOMES = ("win", "tie", "loss", "unparseable", "error", "pending")
PAGE_SIZE = 20
ALL_PROMPTS = 100_000  # an evaluation's most prompts (EvaluationCreate.max_prompts)
_BY_OUTCOME = {"a": "win", "tie": "tie", "b": "loss"}
_BY_STATUS = {"unparseable": "unparseable", "teacher_error": "error"}


def outcome_of(verdict: dict[str, Any] | None) -> str:
    """A stored PairVerdict's outcome in words, from ``system_a``'s side; ``pending`` before it is judged."""
    if not verdict:
        return "pending"
    if verdict.get("status") == "decided":
        return _BY_OUTCOME.get(str(verdict.get("outcome")), "pending")
    return _BY_STATUS.get(str(verdict.get("status")), "pending")


@dataclass(frozen=True)
class Comparison:
    position: int
    prompt_id: str
    record_id: int | None
    text: str
    category: str | None
    reference: str | None
    answer_a: str | None
    answer_b: str | None
    outcome: str
    verdict: dict[str, Any] | None
    """The stored PairVerdict (``ab``: system_a shown first; ``ba``: system_b shown first)."""


@dataclass
class ComparisonPage:
    pairs: list[tuple[str, str]]
    pair: int
    categories: list[str]
    counts: dict[str, int]
    """Prompts per outcome for the chosen pair and category (before the outcome filter)."""
    total: int
    """Prompts that pass both filters."""
    offset: int
    limit: int = PAGE_SIZE
    rows: list[Comparison] = field(default_factory=list)


def comparison_page(rows: list[dict[str, Any]], names: list[str], flt: Filters) -> ComparisonPage:
    """One pair's comparisons, filtered by category and by outcome from its first system's side, one page of
    them; `rows` are app.evaluation.service.comparisons' (every prompt, all pairs' verdicts)."""
    pairs = list(combinations(dict.fromkeys(names), 2))
    index = flt.pair if 0 <= flt.pair < len(pairs) else 0
    a, b = pairs[index] if pairs else ("", "")
    shown: list[Comparison] = []
    for position, row in enumerate(rows):
        verdict = next((v for v in row["verdicts"] if (v.get("system_a"), v.get("system_b")) == (a, b)), None)
        answers = row["answers"]
        shown.append(
            Comparison(
                position=position,
                prompt_id=row["prompt_id"],
                record_id=row["record_id"],
                text=row["text"],
                category=row["category"],
                reference=row["reference"],
                answer_a=answers.get(a),
                answer_b=answers.get(b),
                outcome=outcome_of(verdict),
                verdict=verdict,
            )
        )
    in_category = [c for c in shown if flt.category in ("", c.category)]
    chosen = [c for c in in_category if flt.outcome in ("", c.outcome)]
    offset = max(0, flt.offset)
    return ComparisonPage(
        pairs=pairs,
        pair=index,
        categories=sorted({c.category for c in shown if c.category}),
        counts=dict(Counter(c.outcome for c in in_category)),
        total=len(chosen),
        offset=offset,
        rows=chosen[offset : offset + PAGE_SIZE],
    )


def evaluation_context(db: Session, user: User, evaluation_id: int, flt: Filters) -> dict[str, Any]:
    evaluation, job = evaluations.get_evaluation(db=db, user=user, evaluation_id=evaluation_id)
    systems = evaluations.systems_of(db=db, evaluation_id=evaluation_id)
    flt = Filters(flt.pair, flt.outcome if flt.outcome in OUTCOMES else "", flt.category, flt.offset)
    rows = evaluations.comparisons(db=db, user=user, evaluation_id=evaluation_id, limit=ALL_PROMPTS)
    page = comparison_page(rows, [s.name for s in systems], flt)
    seconds = jobview.run_time(job.started_at, job.finished_at, utcnow()) if job else None
    return {
        "evaluation": evaluation,
        "job": job,
        "systems": systems,
        "report": report(evaluation.results),
        "page": page,
        "flt": Filters(page.pair, flt.outcome, flt.category, page.offset),
        "outcome_words": OUTCOME_WORDS,
        "active": ACTIVE_STATUSES,
        "counters": jobview.rows(job.counters if job else None),
        "duration": jobview.duration(seconds),
        "params": evaluation.params,
        "is_project_curator": projects.role_in_project(db=db, user=user, project_id=evaluation.project_id)
        in (Role.admin.value, Role.curator.value),
    }


@router.get("/ui/evaluations/{evaluation_id}")
def evaluation_page(
    request: Request,
    evaluation_id: int,
    user: PageUser,
    db: SessionDep,
    pair: int = 0,
    outcome: str = "",
    category: str = "",
    offset: int = 0,
) -> Response:
    """Progress while it runs; the results and every comparison once judged (404 outside the project)."""
    flt = Filters(pair, outcome, category, offset)
    return render(request, "evaluation.html", user, **evaluation_context(db, user, evaluation_id, flt))
