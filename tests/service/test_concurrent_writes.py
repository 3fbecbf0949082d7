"""Concurrent writers on committed data, as the API's request threads are: PostgreSQL and the embedded
SQLite (with the engine the app itself builds, not the test suite's savepoint engine)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from app.auth import service as auth_service
from app.auth.models import ApiToken, User
from app.db import make_engine
from app.errors import Conflict
from app.migrate import upgrade
from app.records import service as records
from app.records.models import Record, RecordRevision
from app.records.schemas import RecordUpdate
from app.review import service as review
from tests.factories import make_dataset, make_project, make_records, make_user


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "postgresql":
        yield request.getfixturevalue("committed_pg")
        return
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    sqlite = make_engine(url)
    yield sqlite
    sqlite.dispose()


def seed(engine: Engine) -> tuple[int, int]:
    """A curator and one record (version 1); returns their ids."""
    with Session(engine) as db:
        user = make_user(db, "annotator")
        dataset = make_dataset(db, make_project(db, (user, "curator")))
        (record,) = make_records(db, dataset, 1)
        db.commit()
        return user.id, record.id


def wait_until_blocked(engine: Engine, thread: threading.Thread) -> None:
    """Until the other writer waits on a lock (PostgreSQL says so; SQLite's busy wait does not)."""
    if engine.dialect.name != "postgresql":
        time.sleep(0.5)
        return
    deadline = time.monotonic() + 10
    with engine.connect() as conn:
        while conn.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted")) == 0:
            assert thread.is_alive(), "the second writer finished without waiting for the first"
            assert time.monotonic() < deadline, "the second writer never waited on the first one's lock"
            time.sleep(0.02)


Change = Callable[[Session, User, int], Record]


def edit_output(text_: str) -> Change:
    return lambda db, user, rid: records.update_record(
        db=db, user=user, record_id=rid, change=RecordUpdate(version=1, output=text_)
    )


def decide(action: str) -> Change:
    return lambda db, user, rid: review.decide(db=db, user=user, record_id=rid, action=action, version=1)


@pytest.mark.parametrize(
    ("first_change", "second_change"),
    [(edit_output("first"), edit_output("second")), (decide("accept"), decide("reject"))],
    ids=["edit", "review-decision"],
)
def test_two_changes_sent_with_one_version_give_one_change_and_one_409(
    engine: Engine, first_change: Change, second_change: Change
) -> None:
    user_id, record_id = seed(engine)
    first = Session(engine, expire_on_commit=False)
    first_change(first, first.get_one(User, user_id), record_id)
    first.flush()  # the first change is written, not yet committed

    outcome: dict[str, object] = {}

    def second_writer() -> None:
        with Session(engine) as db:
            try:
                second_change(db, db.get_one(User, user_id), record_id)
                db.commit()
                outcome["second"] = "committed"
            except Conflict as exc:
                outcome["second"] = f"409: {exc}"
            except Exception as exc:  # a 500 in the API: what this test guards against
                outcome["second"] = f"error: {exc!r}"

    thread = threading.Thread(target=second_writer)
    thread.start()
    wait_until_blocked(engine, thread)
    assert thread.is_alive(), "the second change did not wait for the first one's commit"
    first.commit()
    first.close()
    thread.join(30)

    assert str(outcome["second"]).startswith("409: record"), outcome
    assert "now 2" in str(outcome["second"])
    with Session(engine) as db:
        record = db.get_one(Record, record_id)
        assert record.version == 2
        if record.output != "Output 0":  # the edit case: the first edit stands, with its revision
            assert record.output == "first"
            versions = db.scalars(
                select(RecordRevision.version).where(RecordRevision.record_id == record_id)
            ).all()
            assert sorted(versions) == [1, 2]
        else:
            assert record.status == "accepted"


def test_requests_sharing_a_token_do_not_queue_behind_its_last_used_update(committed_pg: Engine) -> None:
    """Fifty clients on one token once made every request wait on that token's row while one request
    updated last_used_at; with all request threads waiting, the holder could not finish (a deadlock)."""
    with Session(committed_pg) as db:
        user = make_user(db, "annotator")
        token, plain = auth_service.issue_token(db=db, user=user, name="shared")
        token.last_used_at = None
        db.commit()
        user_id, token_id = user.id, token.id

    holder = Session(committed_pg)
    found = auth_service.user_for_token(db=holder, plain=plain)
    holder.flush()  # this request holds the token's row until it commits
    assert found is not None and found.id == user_id

    seen: dict[str, object] = {}

    def other_request() -> None:
        with Session(committed_pg) as db:
            other = auth_service.user_for_token(db=db, plain=plain)
            db.commit()
            seen["user"] = other.id if other is not None else None

    thread = threading.Thread(target=other_request)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "a request with the same token waited on the token's row lock"
    assert seen == {"user": user_id}
    holder.commit()
    holder.close()
    with Session(committed_pg) as db:
        assert db.get_one(ApiToken, token_id).last_used_at is not None
