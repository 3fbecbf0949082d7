from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter

from app.deps import CurrentUser, SessionDep
from app.projects import service
from app.projects.models import Project
from app.projects.schemas import MemberRead, MemberSet, ProjectCreate, ProjectRead, ProjectUpdate

router = APIRouter(tags=["projects"])


@router.get("/projects", response_model=list[ProjectRead])
def list_projects(user: CurrentUser, db: SessionDep) -> Sequence[Project]:
    return service.list_projects(db=db, user=user)


@router.post("/projects", response_model=ProjectRead, status_code=201)
def create_project(body: ProjectCreate, user: CurrentUser, db: SessionDep) -> Project:
    return service.create_project(db=db, user=user, name=body.name, description=body.description)


@router.get("/projects/{project_id}", response_model=ProjectRead)
def get_project(project_id: int, user: CurrentUser, db: SessionDep) -> Project:
    return service.require_project(db=db, user=user, project_id=project_id)


@router.patch("/projects/{project_id}", response_model=ProjectRead)
def update_project(project_id: int, body: ProjectUpdate, user: CurrentUser, db: SessionDep) -> Project:
    return service.update_project(
        db=db, user=user, project_id=project_id, name=body.name, description=body.description
    )


@router.get("/projects/{project_id}/members", response_model=list[MemberRead])
def list_members(project_id: int, user: CurrentUser, db: SessionDep) -> list[MemberRead]:
    rows = service.list_members(db=db, user=user, project_id=project_id)
    return [MemberRead(user_id=u.id, username=u.username, role=m.role) for m, u in rows]


@router.put("/projects/{project_id}/members", response_model=MemberRead)
def set_member(project_id: int, body: MemberSet, user: CurrentUser, db: SessionDep) -> MemberRead:
    member = service.add_member(db=db, user=user, project_id=project_id, user_id=body.user_id, role=body.role)
    username = service.username_of(db=db, user_id=member.user_id)
    return MemberRead(user_id=member.user_id, username=username, role=member.role)


@router.delete("/projects/{project_id}/members/{user_id}", status_code=204)
def remove_member(project_id: int, user_id: int, user: CurrentUser, db: SessionDep) -> None:
    service.remove_member(db=db, user=user, project_id=project_id, user_id=user_id)
