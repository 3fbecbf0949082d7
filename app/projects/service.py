from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.models import Role, User
from app.errors import Conflict, Forbidden, Invalid, NotFound
from app.projects.models import Project, ProjectMember

RANK = {Role.annotator.value: 1, Role.curator.value: 2, Role.admin.value: 3}


def role_in_project(*, db: Session, user: User, project_id: int) -> str | None:
    """The user's effective role in a project: admins are admins everywhere; others by membership."""
    if user.role == Role.admin.value:
        return Role.admin.value
    return db.scalar(
        select(ProjectMember.role).where(
            ProjectMember.project_id == project_id, ProjectMember.user_id == user.id
        )
    )


def require_project(
    *, db: Session, user: User, project_id: int, min_role: str = Role.annotator.value
) -> Project:
    """Load a project the user may act on. Non-members get 404 so ids of other projects reveal nothing."""
    project = db.get(Project, project_id)
    role = role_in_project(db=db, user=user, project_id=project_id) if project else None
    if project is None or role is None:
        raise NotFound(f"project {project_id} not found")
    if RANK[role] < RANK[min_role]:
        raise Forbidden(f"this needs the {min_role} role in project {project_id}; you are {role}")
    return project


def list_projects(*, db: Session, user: User) -> Sequence[Project]:
    query = select(Project).order_by(Project.id)
    if user.role != Role.admin.value:
        query = query.join(ProjectMember, ProjectMember.project_id == Project.id).where(
            ProjectMember.user_id == user.id
        )
    return db.scalars(query).all()


def _check_name_free(*, db: Session, name: str, other_than: int | None = None) -> None:
    """Project names are unique regardless of case (two projects "Demo" and "demo" confuse people)."""
    query = select(Project.id).where(func.lower(Project.name) == name.lower())
    if other_than is not None:
        query = query.where(Project.id != other_than)
    if db.scalar(query) is not None:
        raise Conflict(f"a project named {name!r} exists", field="name")


def create_project(*, db: Session, user: User, name: str, description: str) -> Project:
    if user.role == Role.annotator.value:
        raise Forbidden("annotators cannot create projects")
    _check_name_free(db=db, name=name)
    project = Project(name=name, description=description, created_by=user.id)
    db.add(project)
    db.flush()
    db.add(ProjectMember(project_id=project.id, user_id=user.id, role=Role.curator.value))
    audit.record(
        db=db,
        user_id=user.id,
        action="project.create",
        entity_type="project",
        entity_id=project.id,
        project_id=project.id,
        detail={"name": name},
    )
    return project


def update_project(
    *, db: Session, user: User, project_id: int, name: str | None, description: str | None
) -> Project:
    project = require_project(db=db, user=user, project_id=project_id, min_role=Role.curator.value)
    before = {"name": project.name, "description": project.description}
    if name is not None and name != project.name:
        _check_name_free(db=db, name=name, other_than=project.id)
        project.name = name
    if description is not None:
        project.description = description
    audit.record(
        db=db,
        user_id=user.id,
        action="project.update",
        entity_type="project",
        entity_id=project.id,
        project_id=project.id,
        before=before,
        after={"name": project.name, "description": project.description},
    )
    return project


def list_members(*, db: Session, user: User, project_id: int) -> Sequence[tuple[ProjectMember, User]]:
    require_project(db=db, user=user, project_id=project_id)
    rows = db.execute(
        select(ProjectMember, User)
        .join(User, User.id == ProjectMember.user_id)
        .where(ProjectMember.project_id == project_id)
        .order_by(User.username)
    ).all()
    return [(m, u) for m, u in rows]


def add_member(*, db: Session, user: User, project_id: int, user_id: int, role: str) -> ProjectMember:
    require_project(db=db, user=user, project_id=project_id, min_role=Role.curator.value)
    if role not in (Role.curator.value, Role.annotator.value):
        raise Invalid("member role must be curator or annotator", field="role")
    target = db.get(User, user_id)
    if target is None:
        raise NotFound(f"user {user_id} not found", field="user_id")
    member = db.scalar(
        select(ProjectMember).where(ProjectMember.project_id == project_id, ProjectMember.user_id == user_id)
    )
    previous = member.role if member is not None else None
    if member is None:
        member = ProjectMember(project_id=project_id, user_id=user_id, role=role)
        db.add(member)
    else:
        member.role = role
    db.flush()
    audit.record(
        db=db,
        user_id=user.id,
        action="member.set",
        entity_type="project",
        entity_id=project_id,
        project_id=project_id,
        detail={"user_id": user_id},
        before={"role": previous},
        after={"role": role},
    )
    return member


def remove_member(*, db: Session, user: User, project_id: int, user_id: int) -> None:
    require_project(db=db, user=user, project_id=project_id, min_role=Role.curator.value)
    member = db.scalar(
        select(ProjectMember).where(ProjectMember.project_id == project_id, ProjectMember.user_id == user_id)
    )
    if member is None:
        raise NotFound(f"user {user_id} is not a member of project {project_id}")
    db.delete(member)
    audit.record(
        db=db,
        user_id=user.id,
        action="member.remove",
        entity_type="project",
        entity_id=project_id,
        project_id=project_id,
        detail={"user_id": user_id},
        before={"role": member.role},
        after={"role": None},
    )


def roles_by_project(*, db: Session, user: User, project_ids: Sequence[int]) -> dict[int, str]:
    """The user's role in each of these projects (admins are admins in every one)."""
    if user.role == Role.admin.value:
        return {pid: Role.admin.value for pid in project_ids}
    query = select(ProjectMember.project_id, ProjectMember.role).where(
        ProjectMember.user_id == user.id, ProjectMember.project_id.in_(project_ids)
    )
    return dict(db.execute(query).tuples().all())


def member_candidates(*, db: Session, user: User, project_id: int) -> Sequence[User]:
    """Active users who are not members of the project yet, by username: whom a curator may add."""
    require_project(db=db, user=user, project_id=project_id, min_role=Role.curator.value)
    members = select(ProjectMember.user_id).where(ProjectMember.project_id == project_id)
    query = select(User).where(User.is_active.is_(True), User.id.not_in(members)).order_by(User.username)
    return db.scalars(query).all()


def username_of(*, db: Session, user_id: int) -> str:
    """A user's name ("" for a user deleted meanwhile)."""
    target = db.get(User, user_id)
    return target.username if target else ""
