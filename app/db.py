"""Engine and session factory. SQLite gets WAL and foreign keys so it behaves like PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.schema import ColumnCollectionConstraint

from app.config import get_settings
from app.errors import Conflict, DomainError, Invalid, NotFound


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the API read while a worker writes; busy_timeout waits instead of failing on lock.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # More connections than request threads (see app.main.THREADS): a request thread must never wait
    # for a connection held by a request whose cleanup needs a free thread (a pool/thread deadlock).
    return create_engine(url, pool_pre_ping=True, pool_size=12, max_overflow=20, pool_timeout=30)


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().resolved_database_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    # Every mapper must be known before the first flush, whichever process (API, worker, CLI) this is.
    import app.models  # noqa: F401

    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """The one unit of work: committed when the block ends, rolled back on error, then closed.

    API and UI requests (app.deps.get_db), job handlers (JobContext.session), the CLI and benchmarks all
    open their sessions here, so "committed" means the same thing everywhere. A request's unit of work
    ends before its response is sent (see get_db), so a 2xx always means the change is stored."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


T = TypeVar("T")
_SQLITE_UNIQUE = re.compile(r"UNIQUE constraint failed: ([\w.,\s]+)")


def insert_ignoring(db: Session | Connection, table: Any, *, index_elements: list[str] | None = None) -> Any:
    """`INSERT ... ON CONFLICT DO NOTHING` in the session's dialect (PostgreSQL or SQLite): the one place
    that picks the statement. `index_elements` names the unique key (default: any conflict)."""
    dialect = db.get_bind().dialect.name if isinstance(db, Session) else db.dialect.name
    if dialect == "postgresql":
        stmt: Any = pg_insert(table)
    elif dialect == "sqlite":
        stmt = sqlite_insert(table)
    else:
        raise NotImplementedError(f"no insert-ignoring-duplicates for the {dialect} dialect")
    return stmt.on_conflict_do_nothing(index_elements=index_elements)


def get_or_404(db: Session, model: type[T], ident: int, what: str) -> T:
    """The row, or NotFound("<what> not found")."""
    row = db.get(model, ident)
    if row is None:
        raise NotFound(f"{what} not found")
    return row


def refusal(exc: DBAPIError) -> DomainError:
    """What a client is told when the database refuses a write: 409 naming the field for a unique or
    foreign key, 422 for a value it cannot store (NUL characters, numbers out of range, too long).

    Services check what they can first (a taken name is a 409 before any SQL); this is the net under
    them, so a refusal found only at flush or commit is never a 2xx and never a 500."""
    orig = exc.orig
    message = str(orig).splitlines()[0] if orig is not None else str(exc)
    if isinstance(exc, IntegrityError):
        table, columns = _constraint_columns(exc)
        if "foreign key" in message.lower():
            return Conflict(f"a referenced row does not exist or is still referenced ({message})")
        if "not null" in message.lower():
            return Invalid(f"a required value is missing ({message})", field=columns[-1] if columns else None)
        if columns:
            named = [c for c in columns if not c.endswith("_id")] or columns
            entity = table[:-1] if table.endswith("s") else table
            return Conflict(
                f"another {entity} already has this {', '.join(named)}: {named[-1]} must be unique",
                field=named[-1],
            )
        return Conflict(f"the change conflicts with existing data ({message})")
    if "NUL" in message or "\\u0000" in message:
        return Invalid("text must not contain NUL characters (\\u0000)")
    return Invalid(f"the database cannot store a value of this request ({message})")


def _constraint_columns(exc: IntegrityError) -> tuple[str, list[str]]:
    """(table, columns) of the unique constraint an IntegrityError names, from our own metadata."""
    from app.base import Base

    name = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
    if name:
        for table in Base.metadata.tables.values():
            for constraint in table.constraints:
                if isinstance(constraint, ColumnCollectionConstraint) and constraint.name == name:
                    return table.name, [c.name for c in constraint.columns]
        return "", []
    found = _SQLITE_UNIQUE.search(str(exc.orig))
    if not found:
        return "", []
    pairs = [p.strip().split(".", 1) for p in found.group(1).split(",") if "." in p]
    return (pairs[0][0], [c for _, c in pairs]) if pairs else ("", [])
