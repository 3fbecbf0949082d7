"""Where the command line's database is, and one clear paragraph when it cannot be used.

`IF_DATA_DIR` defaults to `data` relative to the directory a command runs in, and without
`IF_DATABASE_URL` the database is the SQLite file `DATA_DIR/instructforge.db`: run from anywhere but the
directory that holds `data/`, a command looks for a database that is not there.

The commands that create the database (`db upgrade`, `serve`, `run`) create the data directory when they
can. The others (`import`, `users create`) never create one: a new, empty database has no dataset to import
into and no account to add to, and a stray `data/` left in whatever directory the command ran from would
only hide the mistake. Either way a database that cannot be opened, reached or created ends the command
with status 2 and a paragraph that says where it looked and how to point it elsewhere, not a traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from app.config import Settings, get_settings

EXIT_NO_DATABASE = 2

Handler = Callable[[argparse.Namespace], int]


class DatabaseUnavailable(Exception):
    """The database cannot be used; the message is the paragraph for the user."""


def needs_database(*, create: bool) -> Callable[[Handler], Handler]:
    """Check the database before `handler` runs, and turn a database lost while it runs into the paragraph.

    `create`: the command may create the data directory and a new database (see the module docstring).
    """

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def run(args: argparse.Namespace) -> int:
            from sqlalchemy.exc import InterfaceError, OperationalError

            try:
                check_database(create=create)
                return handler(args)
            except DatabaseUnavailable as exc:
                print(exc, file=sys.stderr)
            except (OperationalError, InterfaceError) as exc:
                print(explain(f"the database failed: {_first_line(exc)}", create=create), file=sys.stderr)
            return EXIT_NO_DATABASE

        return run

    return decorate


def check_database(*, create: bool) -> None:
    """Raise DatabaseUnavailable unless the database can be opened (with `create`: made if missing)."""
    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from app.db import get_engine

    settings = get_settings()
    url = make_url(settings.resolved_database_url)
    sqlite_file = Path(url.database) if url.get_backend_name() == "sqlite" and url.database else None
    if sqlite_file == Path(":memory:"):
        sqlite_file = None
    if create:
        for directory in {settings.data_dir, *([sqlite_file.parent] if sqlite_file else [])}:
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                why = "a file of that name is in the way" if directory.exists() else exc.strerror or str(exc)
                problem = f"the directory {directory.absolute()} cannot be created ({why})"
                raise DatabaseUnavailable(explain(problem, create=create)) from exc
    elif sqlite_file is not None and not sqlite_file.is_file():
        raise DatabaseUnavailable(explain(f"there is no database at {sqlite_file.absolute()}", create=create))
    try:
        with get_engine().connect() as conn:
            empty = not inspect(conn).has_table("alembic_version")
    except SQLAlchemyError as exc:
        verb = "opened" if sqlite_file else "reached"
        problem = f"{_shown(settings)} cannot be {verb} ({_first_line(exc)})"
        raise DatabaseUnavailable(explain(problem, create=create)) from exc
    if empty and not create:
        problem = f"{_shown(settings)} has no tables yet: run `instructforge db upgrade` to create them"
        raise DatabaseUnavailable(explain(problem, create=create, where=False))


def explain(problem: str, *, create: bool, where: bool = True) -> str:
    """'error: <problem>.' and, with `where`, where the database is looked for and how to set it."""
    text = f"error: {problem}."
    if where:
        text += " " + _where(get_settings(), create=create)
    return textwrap.fill(text, width=100, break_long_words=False, break_on_hyphens=False)


def _where(settings: Settings, *, create: bool) -> str:
    if settings.database_url:
        return (
            "The database is IF_DATABASE_URL: check that its server runs and can be reached from here, and "
            "the URL's host, port, user, password and database name; or unset IF_DATABASE_URL to use the "
            f"embedded SQLite database in the data directory ({settings.data_dir.absolute()})."
        )
    if "data_dir" in settings.model_fields_set:
        origin = "set by IF_DATA_DIR"
    else:
        origin = f"IF_DATA_DIR is not set, so it is ./data in the current directory, {Path.cwd()}"
    text = (
        f"Without IF_DATABASE_URL the database is instructforge.db in the data directory, "
        f"{settings.data_dir.absolute()} ({origin}). Run instructforge from the directory that holds your "
        "data directory, or set IF_DATA_DIR to it (export IF_DATA_DIR=/path/to/data, or a line in a .env "
        "file in the current directory), or set IF_DATABASE_URL to a PostgreSQL database "
        "(postgresql+psycopg://user:password@host/instructforge)."
    )
    if create:
        return text + " The data directory must be somewhere this user can write."
    return text + " A new database is created by `instructforge db upgrade`."


def _shown(settings: Settings) -> str:
    return f"the database {location(settings)}"


def location(settings: Settings) -> str:
    """The database as a user may see it: a SQLite file's absolute path, or the URL without its password."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        return str(Path(url.database).absolute())
    return url.render_as_string(hide_password=True)


def _first_line(exc: BaseException) -> str:
    """The driver's own words ('unable to open database file', 'Connection refused'), without SQL."""
    cause = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__
