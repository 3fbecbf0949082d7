from __future__ import annotations

import math
import random

from fastapi import APIRouter

from app.auth.models import Role
from app.datasets.service import require_dataset
from app.deps import CurrentUser, SessionDep
from app.errors import Invalid
from app.generation.jobs import get_teacher, teachers
from app.generation.schemas import EstimateRead, EstimateRequest, SelfInstructJobParams, TeacherRead
from app.jobs.service import validation_message

router = APIRouter(tags=["generation"])


@router.get("/teachers", response_model=list[TeacherRead])
def list_teachers(user: CurrentUser) -> list[TeacherRead]:
    """Teachers configured in IF_TEACHERS: names, models and prices for the job forms. API keys stay in the
    environment, never shown; where a teacher is served (`base_url`, an internal address) only to admins,
    who configure them."""
    admin = user.role == Role.admin.value
    return [
        TeacherRead(
            name=t.name,
            model=t.model,
            base_url=t.base_url if admin else None,
            api=t.api,
            max_concurrency=t.max_concurrency,
            price_in_per_1k=t.price_in_per_1k,
            price_out_per_1k=t.price_out_per_1k,
        )
        for t in teachers().values()
    ]


@router.post("/generation/estimate", response_model=EstimateRead)
def estimate(body: EstimateRequest, user: CurrentUser, db: SessionDep) -> EstimateRead:
    """Dry-run a few of the job's own first prompts and extrapolate the cost of the whole job.

    The answers go into the response cache, so the job does not pay for them again."""
    from pydantic import ValidationError

    from app.generation.cache import DbResponseCache
    from app.pipeline.llm import Gateway, Sampling, estimate_cost, run_coroutine
    from app.pipeline.self_instruct import SelfInstructParams, build_instruction_prompt
    from app.records.models import Record

    dataset = require_dataset(db=db, user=user, dataset_id=body.dataset_id, min_role=Role.curator.value)
    if body.kind != "self_instruct":
        raise Invalid("estimates are available for self_instruct jobs", field="kind")
    try:
        p = SelfInstructJobParams.model_validate(body.params)
    except ValidationError as exc:
        raise Invalid(validation_message(exc)) from exc
    teacher = get_teacher(p)
    human = list(
        db.scalars(
            Record.__table__.select()
            .with_only_columns(Record.instruction)
            .where(Record.dataset_id == dataset.id, Record.source == "seed")
            .order_by(Record.id)
        )
    )
    if not human:
        raise Invalid("the dataset has no seed tasks to build prompts from")
    params = SelfInstructParams(
        target=p.target,
        batch_size=p.batch_size,
        num_human=p.num_human,
        num_machine=p.num_machine,
        language="zh" if dataset.language.startswith("zh") else "en",
        sampling=Sampling(temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens),
        seed=p.seed,
    )
    k = min(body.sample_prompts, p.batch_size)
    prompts = [
        build_instruction_prompt(
            human=human, machine=[], rng=random.Random(f"{p.seed}:0:{i}"), params=params
        )[0]
        for i in range(k)
    ]
    # Per kept task: its share of an instruction prompt (about 3 usable items each) plus the
    # classification and the instance calls.
    total = math.ceil(p.target / 3) + 2 * p.target

    async def go() -> EstimateRead:
        async with Gateway(teacher, cache=DbResponseCache()) as gateway:
            est = await estimate_cost(
                gateway=gateway,
                prompts=prompts,
                total_calls=total,
                purpose="self_instruct.instructions",
                sampling=params.sampling,
                sample_indices=list(range(k)),
            )
        return EstimateRead(**est.__dict__)

    return run_coroutine(go())
