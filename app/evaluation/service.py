"""Evaluations: validate and queue (`evaluate` job on the `gpu` queue), list, read, cancel, resume, export.

No torch and no teacher calls here: the job (app/evaluation/jobs.py) does the work. Functions are keyword-only
and take a session, so the API, the pages and tests share them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.models import Role, User
from app.datasets.models import Dataset
from app.datasets.service import require_dataset
from app.db import get_or_404
from app.errors import Invalid, NotFound, not_found_as
from app.evaluation.models import (
    Evaluation,
    EvaluationAnswer,
    EvaluationPrompt,
    EvaluationSystem,
    EvaluationVerdict,
)
from app.evaluation.schemas import (
    EstimateLine,
    EvaluateAgainstBase,
    EvaluationCreate,
    EvaluationEstimate,
    LineageRead,
    SystemSpec,
)
from app.jobs import service as jobs
from app.jobs.models import Job, JobStatus
from app.projects.service import require_project
from app.snapshots.service import require_snapshot
from app.training.models import TrainingRun
from trainer.contract import ADAPTER_DIR, MODEL_DIR

EXPORT_BATCH = 500


def _teacher_names() -> set[str]:
    from app.generation.jobs import teachers

    return set(teachers())


def _system_row(
    db: Session, user: User, project_id: int, spec: SystemSpec, i: int, known_teachers: set[str]
) -> EvaluationSystem:
    """One system, checked; errors name the field (`systems.1.training_run_id`)."""
    from app.training.service import resolve_base_model

    where = f"systems.{i}"
    if spec.kind == "base":
        if not spec.base_model:
            raise Invalid(f"{where}.base_model is required for a base system", field=f"{where}.base_model")
        try:
            resolve_base_model(spec.base_model)
        except Invalid as exc:
            raise Invalid(f"{where}.base_model: {exc.message}", field=f"{where}.base_model") from None
        return EvaluationSystem(kind="base", base_model=spec.base_model, name=spec.name or spec.base_model)
    if spec.kind == "run":
        run = db.get(TrainingRun, spec.training_run_id) if spec.training_run_id is not None else None
        if run is None or run.project_id != project_id:
            raise Invalid(
                f"{where}.training_run_id: no training run {spec.training_run_id} in this project",
                field=f"{where}.training_run_id",
            )
        job = db.get(Job, run.job_id)
        if job is None or job.status != JobStatus.succeeded.value:
            state = job.status if job is not None else "gone"
            raise Invalid(
                f"{where}.training_run_id: training run {run.id} is {state}; only a succeeded run has an adapter",
                field=f"{where}.training_run_id",
            )
        trained = Path(run.artifacts_dir)
        if not ((trained / ADAPTER_DIR).is_dir() or (trained / MODEL_DIR).is_dir()):  # MODEL_DIR: method=full
            raise Invalid(
                f"{where}.training_run_id: training run {run.id} has no adapter on this server",
                field=f"{where}.training_run_id",
            )
        return EvaluationSystem(
            kind="run", base_model=run.base_model, training_run_id=run.id, name=spec.name or f"run {run.id}"
        )
    if not spec.teacher or spec.teacher not in known_teachers:
        names = ", ".join(sorted(known_teachers)) or "none configured (set IF_TEACHERS)"
        raise Invalid(
            f"{where}.teacher: unknown teacher {spec.teacher!r}; known: {names}", field=f"{where}.teacher"
        )
    return EvaluationSystem(kind="teacher", teacher=spec.teacher, name=spec.name or f"teacher {spec.teacher}")


def _prompt_set(db: Session, user: User, body: EvaluationCreate) -> tuple[Dataset, str]:
    """The prompt set's dataset (for the project and language) and how it is named."""
    if (body.dataset_id is None) == (body.snapshot_id is None):
        raise Invalid("give exactly one of dataset_id and snapshot_id", field="snapshot_id")
    if body.snapshot_id is not None:
        with not_found_as(f"snapshot {body.snapshot_id}"):
            snap = require_snapshot(
                db=db, user=user, snapshot_id=body.snapshot_id, min_role=Role.curator.value
            )
        dataset = db.get(Dataset, snap.dataset_id)
        assert dataset is not None
        return dataset, f"snapshot {snap.id}"
    if body.split != "all":
        raise Invalid(
            "split=validation needs a snapshot (a dataset changes; its split would too)", field="split"
        )
    assert body.dataset_id is not None
    dataset = require_dataset(db=db, user=user, dataset_id=body.dataset_id, min_role=Role.curator.value)
    return dataset, f"dataset {dataset.id}"


def _checked(
    db: Session, user: User, body: EvaluationCreate
) -> tuple[Dataset, str, list[EvaluationSystem], list[str]]:
    """The prompt set's dataset and name, the systems and their names, or Invalid naming the field."""
    dataset, set_name = _prompt_set(db, user, body)
    project_id = dataset.project_id
    require_project(db=db, user=user, project_id=project_id, min_role=Role.curator.value)
    if len(body.systems) < 2:
        raise Invalid("systems: an evaluation compares at least 2 systems", field="systems")
    known = _teacher_names()
    if body.judge_teacher not in known:
        listed = ", ".join(sorted(known)) or "none configured (set IF_TEACHERS)"
        raise Invalid(
            f"judge_teacher: unknown teacher {body.judge_teacher!r}; known: {listed}", field="judge_teacher"
        )
    systems = [_system_row(db, user, project_id, spec, i, known) for i, spec in enumerate(body.systems)]
    names = [s.name for s in systems]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise Invalid(f"systems: two systems are named {duplicate!r}; give them names", field="systems")
    return dataset, set_name, systems, names


def create_evaluation(*, db: Session, user: User, body: EvaluationCreate) -> Evaluation:
    """Validate the systems, prompt set and judge, store the evaluation and queue its job (curators)."""
    dataset, set_name, systems, names = _checked(db, user, body)
    project_id = dataset.project_id
    job = jobs.create_job(
        db=db,
        user=user,
        kind="evaluate",
        project_id=project_id,
        dataset_id=None,
        params={"evaluation_id": 0},
        enqueue=False,
        internal=True,
    )
    params = body.model_dump(
        mode="json", exclude={"name", "dataset_id", "snapshot_id", "split", "systems", "judge_teacher"}
    )
    params["language"] = body.language or ("zh" if dataset.language.startswith("zh") else "en")
    evaluation = Evaluation(
        project_id=project_id,
        name=body.name or f"{' vs '.join(names)} on {set_name}",
        dataset_id=body.dataset_id,
        snapshot_id=body.snapshot_id,
        split=body.split,
        judge_teacher=body.judge_teacher,
        params=params,
        job_id=job.id,
        created_by=user.id,
    )
    db.add(evaluation)
    db.flush()
    for position, system in enumerate(systems):
        system.evaluation_id, system.position = evaluation.id, position
        db.add(system)
    job.params = {"evaluation_id": evaluation.id}
    audit.record(
        db=db,
        user_id=user.id,
        action="evaluation.create",
        entity_type="evaluation",
        entity_id=evaluation.id,
        project_id=project_id,
        detail={"systems": names, "prompt_set": set_name, "split": body.split, "judge": body.judge_teacher},
    )
    db.commit()  # a worker must never get the id of a row it cannot see yet
    jobs.send(db=db, job=job)
    return evaluation


ESTIMATE_BASIS = (
    "computed from the prompt set's lengths (about 4 characters a token, 1 a CJK character) and the "
    "teachers' prices; no teacher was called: the judge's prompts hold answers that do not exist yet. Every "
    "answer is counted at max_new_tokens and every verdict at judge_max_tokens, so the cost is an upper bound."
)


def estimate_evaluation(*, db: Session, user: User, body: EvaluationCreate) -> EvaluationEstimate:
    """What the evaluation `body` describes would call and cost (curators; the same checks as creating it,
    nothing stored, no teacher called): judge calls (pairs x prompts x 2 orders, + one score per answer
    with `scores`) and teacher systems' answer calls, with tokens and cost from the teachers' prices."""
    from app.evaluation.jobs import _teacher, select_prompts
    from app.evaluation.prompts import SetPrompt
    from app.pipeline import pairwise as pw
    from app.pipeline.llm import approx_tokens

    dataset, _, systems, names = _checked(db, user, body)
    params = body.model_dump(mode="json")
    params["language"] = body.language or ("zh" if dataset.language.startswith("zh") else "en")
    prompts = select_prompts(
        db, snapshot_id=body.snapshot_id, dataset_id=body.dataset_id, split=body.split, params=params
    )
    if not prompts:
        raise Invalid(
            "the prompt set has no prompts", field="snapshot_id" if body.snapshot_id else "dataset_id"
        )
    answer_max = body.generation.max_new_tokens
    judge_params = {
        "rubric": body.rubric,
        "language": params["language"],
        "use_reference": body.use_reference,
    }
    pairs = pw.all_pairs(names)

    def judged(p: SetPrompt) -> pw.EvalPrompt:
        return pw.EvalPrompt(id=p.prompt_id, text=p.text, category=p.category, reference=p.reference)

    # A judge prompt without its answers, plus the answers at their longest.
    pair_in = sum(
        approx_tokens(pw.pairwise_prompt(judged(p), "", "", params=pw.PairwiseParams(**judge_params)))
        + 2 * answer_max
        for p in prompts
    )
    lines: list[EstimateLine] = []

    def line(purpose: Any, teacher: str, calls: int, tin: int, tout: int, system: str | None = None) -> None:
        config = _teacher(teacher, body.concurrency)
        cost = tin * config.price_in_per_1k / 1000 + tout * config.price_out_per_1k / 1000
        lines.append(
            EstimateLine(
                purpose=purpose,
                teacher=teacher,
                system=system,
                calls=calls,
                tokens_in=tin,
                tokens_out=tout,
                cost_usd=cost,
            )
        )

    n_pair_calls = 2 * len(pairs) * len(prompts)
    line(
        "judge_pairs",
        body.judge_teacher,
        n_pair_calls,
        2 * len(pairs) * pair_in,
        n_pair_calls * body.judge_max_tokens,
    )
    if body.scores:
        score_in = sum(
            approx_tokens(pw.single_prompt(judged(p), "", params=pw.ScoreParams(**judge_params))) + answer_max
            for p in prompts
        )
        n_score_calls = len(systems) * len(prompts)
        line(
            "judge_scores",
            body.judge_teacher,
            n_score_calls,
            len(systems) * score_in,
            n_score_calls * body.judge_max_tokens,
        )
    answer_in = sum(approx_tokens("\n\n".join(m["content"] for m in p.messages)) for p in prompts)
    for system in systems:
        if system.kind == "teacher" and system.teacher is not None:
            line(
                "teacher_answers",
                system.teacher,
                len(prompts),
                answer_in,
                len(prompts) * answer_max,
                system.name,
            )
    judge_calls = sum(x.calls for x in lines if x.purpose != "teacher_answers")
    answer_calls = sum(x.calls for x in lines if x.purpose == "teacher_answers")
    return EvaluationEstimate(
        prompts=len(prompts),
        systems=len(systems),
        pairs=len(pairs),
        judge_calls=judge_calls,
        answer_calls=answer_calls,
        local_answers=len(prompts) * sum(1 for s in systems if s.kind != "teacher"),
        total_calls=judge_calls + answer_calls,
        tokens_in=sum(x.tokens_in for x in lines),
        tokens_out=sum(x.tokens_out for x in lines),
        estimated_cost_usd=sum(x.cost_usd for x in lines),
        lines=lines,
        basis=ESTIMATE_BASIS,
    )


def evaluate_against_base(*, db: Session, user: User, run_id: int, body: EvaluateAgainstBase) -> Evaluation:
    """A run against its own base model on its snapshot: its validation split when it held one out."""
    from app.training.service import require_run

    run = require_run(db=db, user=user, run_id=run_id, min_role=Role.curator.value)
    val_fraction = float(run.config.get("val_fraction") or 0.0)
    split = body.split or ("validation" if val_fraction > 0 else "all")
    if split == "validation" and val_fraction <= 0:
        raise Invalid(
            f"split: training run {run.id} held out no validation split (val_fraction 0)", field="split"
        )
    create = EvaluationCreate(
        name=body.name,
        snapshot_id=run.snapshot_id,
        split=split,
        val_fraction=val_fraction if val_fraction > 0 else 0.05,
        seed=int(run.config.get("seed") or 0),
        max_prompts=body.max_prompts,
        systems=[
            SystemSpec(kind="run", training_run_id=run.id),
            SystemSpec(kind="base", base_model=run.base_model, name=f"base {run.base_model}"),
        ],
        judge_teacher=body.judge_teacher,
        rubric=body.rubric,
        scores=body.scores,
        generation=body.generation,
    )
    return create_evaluation(db=db, user=user, body=create)


def require_evaluation(
    *, db: Session, user: User, evaluation_id: int, min_role: str = Role.annotator.value
) -> Evaluation:
    evaluation = get_or_404(db, Evaluation, evaluation_id, f"evaluation {evaluation_id}")
    with not_found_as(f"evaluation {evaluation_id}"):
        require_project(db=db, user=user, project_id=evaluation.project_id, min_role=min_role)
    return evaluation


def job_of(*, db: Session, evaluation: Evaluation) -> Job | None:
    return db.get(Job, evaluation.job_id)


def systems_of(*, db: Session, evaluation_id: int) -> Sequence[EvaluationSystem]:
    return db.scalars(
        select(EvaluationSystem)
        .where(EvaluationSystem.evaluation_id == evaluation_id)
        .order_by(EvaluationSystem.position)
    ).all()


def list_evaluations(*, db: Session, user: User, project_id: int | None) -> list[tuple[Evaluation, Job]]:
    """Newest first: a project's (members), or every evaluation of the user's projects."""
    query = select(Evaluation, Job).join(Job, Job.id == Evaluation.job_id).order_by(Evaluation.id.desc())
    if project_id is not None:
        require_project(db=db, user=user, project_id=project_id)
        query = query.where(Evaluation.project_id == project_id)
    elif user.role != Role.admin.value:
        from app.projects.models import ProjectMember

        query = query.where(
            Evaluation.project_id.in_(
                select(ProjectMember.project_id).where(ProjectMember.user_id == user.id)
            )
        )
    return [(e, j) for e, j in db.execute(query.limit(200)).all()]


def get_evaluation(*, db: Session, user: User, evaluation_id: int) -> tuple[Evaluation, Job | None]:
    evaluation = require_evaluation(db=db, user=user, evaluation_id=evaluation_id)
    return evaluation, job_of(db=db, evaluation=evaluation)


def results(*, db: Session, user: User, evaluation_id: int) -> dict[str, Any]:
    """The stored results (empty until the job has judged): see EvaluationDetail.results."""
    return dict(require_evaluation(db=db, user=user, evaluation_id=evaluation_id).results or {})


def cancel_evaluation(*, db: Session, user: User, evaluation_id: int) -> tuple[Evaluation, Job]:
    evaluation = require_evaluation(
        db=db, user=user, evaluation_id=evaluation_id, min_role=Role.curator.value
    )
    return evaluation, jobs.cancel_job(db=db, user=user, job_id=evaluation.job_id)


def resume_evaluation(*, db: Session, user: User, evaluation_id: int) -> tuple[Evaluation, Job]:
    """Re-queue a paused or failed evaluation: stored answers and verdicts are kept, only the rest is done."""
    evaluation = require_evaluation(
        db=db, user=user, evaluation_id=evaluation_id, min_role=Role.curator.value
    )
    return evaluation, jobs.resume_job(db=db, user=user, job_id=evaluation.job_id)


def start_export(*, db: Session, user: User, evaluation_id: int) -> Evaluation:
    """Authorise and audit an export (curators: the answers hold the prompt set's data)."""
    evaluation = require_evaluation(
        db=db, user=user, evaluation_id=evaluation_id, min_role=Role.curator.value
    )
    audit.record(
        db=db,
        user_id=user.id,
        action="evaluation.export",
        entity_type="evaluation",
        entity_id=evaluation.id,
        project_id=evaluation.project_id,
    )
    return evaluation


def export_lines(db: Session, evaluation_id: int) -> Iterator[str]:
    """Every line of the export, read in batches: the evaluation, its systems, prompts, answers, verdicts.

    One JSON object per line with a `type` field (evaluation | system | prompt | answer | verdict); answers
    and verdicts name their system by name, so a file reads without the database."""
    evaluation = db.get(Evaluation, evaluation_id)
    if evaluation is None:
        raise NotFound(f"evaluation {evaluation_id} not found")
    yield _line(
        {
            "type": "evaluation",
            "id": evaluation.id,
            "name": evaluation.name,
            "dataset_id": evaluation.dataset_id,
            "snapshot_id": evaluation.snapshot_id,
            "split": evaluation.split,
            "judge_teacher": evaluation.judge_teacher,
            "params": evaluation.params,
            "results": evaluation.results,
        }
    )
    names: dict[int, str] = {}
    for s in systems_of(db=db, evaluation_id=evaluation_id):
        names[s.id] = s.name
        yield _line(
            {
                "type": "system",
                "name": s.name,
                "kind": s.kind,
                "base_model": s.base_model,
                "training_run_id": s.training_run_id,
                "teacher": s.teacher,
            }
        )
    for p in _batched(db, EvaluationPrompt, evaluation_id):
        yield _line(
            {
                "type": "prompt",
                "prompt_id": p.prompt_id,
                "record_id": p.record_id,
                "text": p.text,
                "messages": p.messages,
                "category": p.category,
                "reference": p.reference,
            }
        )
    for a in _batched(db, EvaluationAnswer, evaluation_id):
        yield _line(
            {
                "type": "answer",
                "system": names.get(a.system_id),
                "prompt_id": a.prompt_id,
                "answer": a.answer,
                "tokens": a.tokens,
            }
        )
    for v in _batched(db, EvaluationVerdict, evaluation_id):
        yield _line({"type": "verdict", "kind": v.kind, "verdict": v.verdict})


def _batched(db: Session, model: Any, evaluation_id: int) -> Iterator[Any]:
    last = 0
    while True:
        rows = db.scalars(
            select(model)
            .where(model.evaluation_id == evaluation_id, model.id > last)
            .order_by(model.id)
            .limit(EXPORT_BATCH)
        ).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].id


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


def comparisons(
    *,
    db: Session,
    user: User,
    evaluation_id: int,
    outcome: str | None = None,
    category: str | None = None,
    limit: int = 200,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Prompt by prompt, for the page's side-by-side view: the prompt, its category and reference, every
    system's answer, and each pair's verdict with the judge's rationale in both orders.

    `outcome` keeps the comparisons that ended so (`a`, `b`, `tie`, or `unparseable` / `teacher_error` for
    those without an outcome); `category` keeps one category. Members of the project may read it."""
    evaluation = require_evaluation(db=db, user=user, evaluation_id=evaluation_id)
    names = {s.id: s.name for s in systems_of(db=db, evaluation_id=evaluation.id)}
    query = select(EvaluationPrompt).where(EvaluationPrompt.evaluation_id == evaluation.id)
    if category is not None:
        query = query.where(EvaluationPrompt.category == category)
    prompts = db.scalars(query.order_by(EvaluationPrompt.position)).all()
    answers: dict[str, dict[str, str]] = {}
    for system_id, prompt_id, answer in db.execute(
        select(EvaluationAnswer.system_id, EvaluationAnswer.prompt_id, EvaluationAnswer.answer).where(
            EvaluationAnswer.evaluation_id == evaluation.id
        )
    ):
        answers.setdefault(prompt_id, {})[names.get(system_id, "?")] = answer
    verdicts: dict[str, list[dict[str, Any]]] = {}
    for verdict in db.scalars(
        select(EvaluationVerdict.verdict).where(
            EvaluationVerdict.evaluation_id == evaluation.id, EvaluationVerdict.kind == "pair"
        )
    ):
        verdicts.setdefault(str(verdict.get("prompt_id")), []).append(verdict)
    rows = []
    for p in prompts:
        pairs = verdicts.get(p.prompt_id, [])
        if outcome is not None:
            pairs = [v for v in pairs if (v.get("outcome") or v.get("status")) == outcome]
            if not pairs:
                continue
        rows.append(
            {
                "prompt_id": p.prompt_id,
                "record_id": p.record_id,
                "text": p.text,
                "category": p.category,
                "reference": p.reference,
                "answers": answers.get(p.prompt_id, {}),
                "verdicts": pairs,
            }
        )
    return rows[offset : offset + limit]


def record_lineage(*, db: Session, user: User, record_id: int) -> list[LineageRead]:
    """A record's lineage, in one query: every snapshot holding it, the training runs on those snapshots and
    the evaluations those runs took part in (a snapshot without runs, or a run without evaluations, is a row
    with the rest empty). Newest snapshot, run and evaluation first; whoever may read the record may read it."""
    from sqlalchemy.orm import aliased

    from app.records.service import get_record
    from app.snapshots.models import Snapshot, SnapshotItem

    get_record(db=db, user=user, record_id=record_id)
    run_job, eval_job = aliased(Job), aliased(Job)
    query = (
        select(
            Snapshot.id,
            Snapshot.name,
            SnapshotItem.record_version,
            TrainingRun.id,
            run_job.status,
            Evaluation.id,
            Evaluation.name,
            eval_job.status,
            EvaluationSystem.name,
        )
        .join(Snapshot, Snapshot.id == SnapshotItem.snapshot_id)
        .outerjoin(TrainingRun, TrainingRun.snapshot_id == Snapshot.id)
        .outerjoin(run_job, run_job.id == TrainingRun.job_id)
        .outerjoin(EvaluationSystem, EvaluationSystem.training_run_id == TrainingRun.id)
        .outerjoin(Evaluation, Evaluation.id == EvaluationSystem.evaluation_id)
        .outerjoin(eval_job, eval_job.id == Evaluation.job_id)
        .where(SnapshotItem.record_id == record_id)
        .order_by(Snapshot.id.desc(), TrainingRun.id.desc(), Evaluation.id.desc())
        .limit(500)
    )
    return [
        LineageRead(
            snapshot_id=snap_id,
            snapshot_name=snap_name,
            record_version=version,
            training_run_id=run_id,
            training_status=run_status,
            evaluation_id=eval_id,
            evaluation_name=eval_name,
            evaluation_status=eval_status,
            system=system,
        )
        for snap_id, snap_name, version, run_id, run_status, eval_id, eval_name, eval_status, system in (
            db.execute(query).all()
        )
    ]
