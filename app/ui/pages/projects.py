"""The dashboard, user administration, projects and their members."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.auth import service as auth_service
from app.auth.models import Role
from app.datasets import service as datasets
from app.deps import SessionDep
from app.errors import Invalid
from app.projects import service as projects
from app.review import service as review
from app.ui.web import CheckedForm, HtmlRoute, PageUser, redirect, render

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)


@router.get("/ui")
def dashboard(request: Request, user: PageUser, db: SessionDep) -> Response:
    """Your projects and their datasets; annotators see their review queues."""
    mine = projects.list_projects(db=db, user=user)
    ids = [p.id for p in mine]
    return render(
        request,
        "dashboard.html",
        user,
        projects=mine,
        datasets=datasets.datasets_by_project(db=db, project_ids=ids),
        roles=projects.roles_by_project(db=db, user=user, project_ids=ids),
        open_assignments=review.open_assignments_by_dataset(db=db, user=user),
    )


@router.get("/ui/users")
def users_page(request: Request, user: PageUser, db: SessionDep) -> Response:
    return render(request, "users.html", user, users=auth_service.list_users(db=db, user=user))


@router.post("/ui/users")
def create_user(form: CheckedForm, user: PageUser, db: SessionDep) -> Response:
    created = auth_service.add_user(
        db=db,
        actor=user,
        username=str(form.get("username", "")).strip(),
        password=str(form.get("password", "")),
        role=str(form.get("role", Role.annotator.value)),
    )
    return redirect("/ui/users", f"created user {created.username}")


@router.post("/ui/projects")
def create_project(form: CheckedForm, user: PageUser, db: SessionDep) -> Response:
    project = projects.create_project(
        db=db, user=user, name=str(form.get("name", "")).strip(), description=str(form.get("description", ""))
    )
    return redirect(f"/ui/projects/{project.id}", "project created")


@router.get("/ui/projects/{project_id}")
def project_page(request: Request, project_id: int, user: PageUser, db: SessionDep) -> Response:
    """Members with their roles and the project's datasets (curators and admins)."""
    project = projects.require_project(db=db, user=user, project_id=project_id, min_role=Role.curator.value)
    return render(
        request,
        "project.html",
        user,
        project=project,
        members=projects.list_members(db=db, user=user, project_id=project_id),
        candidates=projects.member_candidates(db=db, user=user, project_id=project_id),
        datasets=datasets.list_datasets(db=db, user=user, project_id=project_id),
    )


@router.post("/ui/projects/{project_id}/members")
def set_member(project_id: int, form: CheckedForm, user: PageUser, db: SessionDep) -> Response:
    try:
        target = int(str(form.get("user_id", "")))
    except ValueError:
        raise Invalid("choose a user", field="user_id") from None
    projects.add_member(
        db=db, user=user, project_id=project_id, user_id=target, role=str(form.get("role", "annotator"))
    )
    return redirect(f"/ui/projects/{project_id}", "member saved")


@router.post("/ui/projects/{project_id}/members/{member_id}/remove")
def remove_member(
    project_id: int, member_id: int, form: CheckedForm, user: PageUser, db: SessionDep
) -> Response:
    projects.remove_member(db=db, user=user, project_id=project_id, user_id=member_id)
    return redirect(f"/ui/projects/{project_id}", "member removed")


@router.post("/ui/projects/{project_id}/datasets")
def create_dataset(project_id: int, form: CheckedForm, user: PageUser, db: SessionDep) -> Response:
    dataset = datasets.create_dataset(
        db=db,
        user=user,
        project_id=project_id,
        name=str(form.get("name", "")).strip(),
        language=str(form.get("language", "en")).strip() or "en",
        description=str(form.get("description", "")),
        guidelines=str(form.get("guidelines", "")),
    )
    return redirect(f"/ui/datasets/{dataset.id}", "dataset created")
