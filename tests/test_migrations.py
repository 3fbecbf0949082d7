"""The models and the migrations describe the same schema: Alembic is the only way the schema changes, so a
model change without its migration (or the reverse) must fail here, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import app.models  # noqa: F401 - registers every table
from app.base import Base
from tests.conftest import engine_for


def test_migrated_schema_matches_the_models(backend: str):
    engine = engine_for(backend)  # migrated to head by the test harness
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == [], diff
