from __future__ import annotations

from fastapi import APIRouter

from app.deps import CurrentUser, SessionDep
from app.generation import service
from app.generation.schemas import EstimateRead, EstimateRequest, TeacherRead

router = APIRouter(tags=["generation"])


@router.get("/teachers", response_model=list[TeacherRead])
def list_teachers(user: CurrentUser) -> list[TeacherRead]:
    """Teachers configured in IF_TEACHERS: names, models and prices for the job forms. API keys stay in the
    environment, never shown; where a teacher is served (`base_url`, an internal address) only to admins,
    who configure them."""
    return service.list_teachers(user=user)


@router.post(
    "/generation/estimate",
    response_model=EstimateRead,
    responses={503: {"description": "The teacher did not answer: nothing was estimated; try again."}},
)
def estimate(body: EstimateRequest, user: CurrentUser, db: SessionDep) -> EstimateRead:
    """Dry-run a few of the job's own first prompts (self_instruct, evol or judge) and extrapolate the cost
    of the whole job.

    The answers go into the response cache, so the job does not pay for them again."""
    return service.estimate(db=db, user=user, request=body)
