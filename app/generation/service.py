"""Generation outside jobs: the teachers a user may see, and what a job will cost before it runs."""

from __future__ import annotations

import logging
import math
import random

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.models import Role, User
from app.datasets.service import require_dataset
from app.errors import DomainError, Invalid, validation_message
from app.generation.cache import DbResponseCache
from app.generation.jobs import get_teacher, self_instruct_params, teachers
from app.generation.schemas import EstimateRead, EstimateRequest, SelfInstructJobParams, TeacherRead
from app.pipeline.llm import Gateway, TeacherError, estimate_cost, run_coroutine
from app.records.models import Record

log = logging.getLogger(__name__)

# The job kinds POST /generation/estimate prices (their forms show an Estimate button).
ESTIMATED_KINDS = ("self_instruct",)


class TeacherDidNotAnswer(DomainError):
    """An estimate needs real answers; like a database that is down, a teacher that is down is no fault of
    the request: nothing was started or stored, try again."""

    status_code = 503


def list_teachers(*, user: User) -> list[TeacherRead]:
    """The teachers of IF_TEACHERS; where one is served (`base_url`) only for admins, who configure them."""
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


def _seed_instructions(*, db: Session, dataset_id: int) -> list[str]:
    query = select(Record.instruction).where(Record.dataset_id == dataset_id, Record.source == "seed")
    return list(db.scalars(query.order_by(Record.id)))


def estimate(*, db: Session, user: User, request: EstimateRequest) -> EstimateRead:
    """Dry-run a few of a self_instruct job's own first prompts and extrapolate the cost of the whole job.

    The answers go into the response cache, so the job does not pay for them again."""
    from app.pipeline.self_instruct import build_instruction_prompt

    dataset = require_dataset(db=db, user=user, dataset_id=request.dataset_id, min_role=Role.curator.value)
    if request.kind not in ESTIMATED_KINDS:
        raise Invalid("estimates are available for self_instruct jobs", field="kind")
    try:
        p = SelfInstructJobParams.model_validate(request.params)
    except ValidationError as exc:
        raise Invalid(validation_message(exc.errors(), prefix="params")) from exc
    teacher = get_teacher(p)
    human = _seed_instructions(db=db, dataset_id=dataset.id)
    if not human:
        raise Invalid("the dataset has no seed tasks to build prompts from")
    params = self_instruct_params(p, language=dataset.language)
    k = min(request.sample_prompts, p.batch_size)
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

    try:
        return run_coroutine(go())
    except TeacherError as exc:
        # The gateway's message names where the teacher is served, which only admins may see.
        log.warning("estimate: teacher %r did not answer: %s", teacher.name, exc)
        raise TeacherDidNotAnswer(
            f"teacher {teacher.name!r} ({teacher.model}) did not answer, so nothing could be estimated; "
            "check that it is up (docs/teachers.md) and try again"
        ) from exc
