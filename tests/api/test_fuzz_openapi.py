"""Property-based test over every operation of the OpenAPI document (schemathesis, seeded and bounded):
no input gives a 5xx, and every documented response matches its documented schema.

It runs the real app in-process on the test's rolled-back session, as an admin who owns one project with
one dataset and a few records, so that generated ids sometimes hit real rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance
from sqlalchemy.orm import Session

from tests.conftest import unit_of_work_on
from tests.factories import make_dataset, make_project, make_records, make_user, token_for

EXAMPLES = 25  # per operation: ~60 operations x 25, about a minute on two cores


@pytest.fixture
def api_schema(db: Session) -> Iterator[Any]:
    from app.deps import get_db
    from app.main import create_app

    app = create_app()

    app.dependency_overrides[get_db] = unit_of_work_on(db)
    yield schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)


@pytest.fixture
def admin_headers(db: Session) -> Callable[[], dict[str, str]]:
    """A fresh token for each request: a generated request may log out, revoke tokens or change the
    password, and the next one must still get past authentication."""
    admin = make_user(db, "admin")
    dataset = make_dataset(db, make_project(db, (admin, "curator")))
    make_records(db, dataset, 3)

    def fresh() -> dict[str, str]:
        db.refresh(admin)
        admin.is_active = True
        return token_for(db, admin)

    return fresh


SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def test_no_generated_request_gives_a_5xx_or_an_undocumented_body(
    api_schema: Any, admin_headers: Callable[[], dict[str, str]]
):
    failures: list[str] = []
    statuses: dict[int, int] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 40
    for operation in operations:

        @SETTINGS
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call_and_validate(
                headers=admin_headers(), checks=[not_a_server_error, response_schema_conformance]
            )
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        try:
            check()
        except BaseException as exc:  # schemathesis raises exception groups; report every operation's
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
    # Not vacuous: many requests, and some got past validation to do real work.
    assert (
        sum(statuses.values()) > 20 * len(operations) and sum(n for s, n in statuses.items() if s < 300) > 50
    ), statuses
