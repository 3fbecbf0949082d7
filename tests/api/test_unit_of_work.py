"""A 2xx means it is stored: every request commits (or fails with a 4xx) before its response is sent.

The in-process `client` runs each request on the test's savepoint. The `served` tests run the real
`app.deps.get_db` in a real uvicorn server on committed data, where "the response was sent before the
commit" can actually be seen: a slow commit, or one that fails.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine, event, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.datasets.models import Dataset
from app.projects.models import Project
from tests.factories import make_dataset, make_project, make_user, token_for


def test_renaming_a_project_to_a_taken_name_is_409_and_changes_nothing(client, db: Session, backend: str):
    admin = make_user(db, "admin")
    headers = token_for(db, admin)
    make_project(db, name="taken")
    project = make_project(db, name="mine")
    res = client.patch(f"/api/v1/projects/{project.id}", json={"name": "taken"}, headers=headers)
    assert res.status_code == 409, res.text
    assert res.json()["field"] == "name"
    # Case only differs: still the same name to a person.
    assert (
        client.patch(f"/api/v1/projects/{project.id}", json={"name": "TAKEN"}, headers=headers).status_code
        == 409
    )
    assert client.get(f"/api/v1/projects/{project.id}", headers=headers).json()["name"] == "mine"
    # Renaming to its own name, or to a free one, still works.
    assert (
        client.patch(f"/api/v1/projects/{project.id}", json={"name": "mine"}, headers=headers).status_code
        == 200
    )
    res = client.patch(f"/api/v1/projects/{project.id}", json={"name": "free"}, headers=headers)
    assert res.status_code == 200 and res.json()["name"] == "free"


def test_renaming_a_dataset_to_a_taken_name_is_409_and_changes_nothing(client, db: Session, backend: str):
    admin = make_user(db, "admin")
    headers = token_for(db, admin)
    project = make_project(db)
    make_dataset(db, project, name="taken")
    dataset = make_dataset(db, project, name="mine")
    res = client.patch(f"/api/v1/datasets/{dataset.id}", json={"name": "taken"}, headers=headers)
    assert res.status_code == 409, res.text
    assert res.json()["field"] == "name"
    assert client.get(f"/api/v1/datasets/{dataset.id}", headers=headers).json()["name"] == "mine"
    # The same name in another project is free.
    other = make_dataset(db, make_project(db), name="x")
    assert (
        client.patch(f"/api/v1/datasets/{other.id}", json={"name": "taken"}, headers=headers).status_code
        == 200
    )


def test_text_the_database_refuses_is_4xx_and_changes_nothing(client, db: Session, pg: str):
    """PostgreSQL cannot store NUL in text: found at flush, answered 4xx, nothing written."""
    admin = make_user(db, "admin")
    headers = token_for(db, admin)
    project = make_project(db, name="clean")
    res = client.patch(
        f"/api/v1/projects/{project.id}", json={"description": "a\u0000b", "name": "renamed"}, headers=headers
    )
    assert 400 <= res.status_code < 500, res.text
    assert "NUL" in res.json()["detail"]
    body = client.get(f"/api/v1/projects/{project.id}", headers=headers).json()
    assert (body["name"], body["description"]) == ("clean", "")


# --- the real unit of work in a real server -------------------------------------------------------------


class Served:
    def __init__(self, backend: str, url: str, headers: dict[str, str], maker: sessionmaker[Session]) -> None:
        self.backend = backend
        self.url = url
        self.headers = headers
        self.maker = maker
        self.http = httpx.Client(base_url=url, headers=headers, timeout=30)

    def on_commit(self, hook: Callable[[Session], None]) -> None:
        """Run `hook` inside every commit of the server's sessions (after the handler returned)."""
        event.listen(self.maker, "before_commit", hook)


@pytest.fixture
def served(backend: str, committed: Engine) -> Iterator[Served]:
    """The app in a real server on the backend's committed test database, with the real get_db."""
    from app.db import get_sessionmaker
    from app.main import create_app
    from tests.procs import free_port

    maker = get_sessionmaker()  # the one session_scope uses, so that hooks on it see every commit
    with maker() as db:
        admin = make_user(db, "admin")
        headers = token_for(db, admin)
        db.commit()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(), host="127.0.0.1", port=free_port(), log_level="warning", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield Served(backend, f"http://127.0.0.1:{server.config.port}/api/v1", headers, maker)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _stored_project_names(served: Served) -> list[str]:
    with served.maker() as db:
        return list(db.scalars(select(Project.name).order_by(Project.id)))


def test_a_created_project_can_be_used_by_the_very_next_request(served: Served):
    # A slow commit widens the window in which a response sent before its commit could be seen.
    served.on_commit(lambda _session: time.sleep(0.3))
    for n in range(3):
        res = served.http.post("/projects", json={"name": f"p{n}"})
        assert res.status_code == 201, res.text
        res = served.http.post(f"/projects/{res.json()['id']}/datasets", json={"name": "d", "language": "en"})
        assert res.status_code == 201, res.text
        assert served.http.get(f"/datasets/{res.json()['id']}").status_code == 200
    with served.maker() as db:
        assert db.scalar(select(Dataset.id).where(Dataset.name == "d").limit(1)) is not None


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly")), 503),
        (IntegrityError("COMMIT", {}, Exception("deferred constraint violated")), 409),
    ],
    ids=["connection-lost", "integrity"],
)
def test_a_failure_at_commit_never_answers_2xx(served: Served, error: Exception, status: int):
    def fail(_session: Session) -> None:
        raise error

    served.on_commit(fail)
    res = served.http.post("/projects", json={"name": "never"})
    assert res.status_code == status, res.text
    assert "detail" in res.json()
    event.remove(served.maker, "before_commit", fail)
    assert _stored_project_names(served) == []
    # The service goes on answering once commits work again.
    assert served.http.post("/projects", json={"name": "later"}).status_code == 201
    assert _stored_project_names(served) == ["later"]


def test_a_unique_name_taken_between_check_and_commit_is_409(served: Served):
    """Two requests create the same name at once: the check passes for both, the database refuses one."""
    if served.backend == "sqlite":
        pytest.skip("SQLite lets one writer in at a time: the second request's check sees the first's commit")
    barrier = threading.Barrier(2, timeout=10)

    def both_checked(_session: Session) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):  # SQLite: the second waits on the first
            barrier.wait()

    served.on_commit(both_checked)
    results: list[Any] = []

    def create() -> None:
        with httpx.Client(base_url=served.url, headers=served.headers, timeout=30) as http:
            results.append(http.post("/projects", json={"name": "race"}))

    threads = [threading.Thread(target=create) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in results) == [201, 409], [r.text for r in results]
    assert _stored_project_names(served) == ["race"]
