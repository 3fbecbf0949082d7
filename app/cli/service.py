"""The service's commands: serve, worker, run (everything, embedded), db upgrade, users create, import."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from app.cli.database import location, needs_database
from app.cli.output import Progress, add_output_options, reason_rows, summary, wants_progress


def _settings() -> Any:
    from app.config import get_settings

    return get_settings()


@needs_database(create=True)
def cmd_db_upgrade(args: argparse.Namespace) -> int:
    return _upgrade(args.revision)


def _upgrade(revision: str) -> int:
    from app.migrate import upgrade

    _settings().data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(revision=revision)
    print(f"database at {revision}: {location(_settings())}")
    return 0


@needs_database(create=False)
def cmd_users_create(args: argparse.Namespace) -> int:
    from app.auth.service import create_user
    from app.db import session_scope
    from app.errors import DomainError

    password = args.password or os.environ.get("IF_NEW_USER_PASSWORD") or ""
    if not password:
        import getpass

        password = getpass.getpass(f"password for {args.username}: ")
    try:
        with session_scope() as db:
            user = create_user(db=db, username=args.username, password=password, role=args.role)
            print(f"created {user.role} {user.username} (id {user.id})")
    except DomainError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return 0


def ensure_admin() -> None:
    """Create the first admin when the database has no user at all (IF_ADMIN_USERNAME, IF_ADMIN_PASSWORD)."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import IntegrityError

    from app.auth.models import User
    from app.auth.service import ensure_admin as _ensure
    from app.db import session_scope

    settings = _settings()
    try:
        with session_scope() as db:
            first = not db.scalar(select(func.count(User.id)))
            generated = _ensure(db=db, username=settings.admin_username, password=settings.admin_password)
    except IntegrityError:
        return  # another API replica starting at the same moment created it first
    if generated:
        bar = "=" * 64
        print(
            f"\n{bar}\n First start: created admin account\n   username: {settings.admin_username}\n"
            f"   password: {generated}\n (shown once; set IF_ADMIN_PASSWORD to choose it)\n{bar}\n",
            flush=True,
        )
    elif first:
        print(
            f"created admin account {settings.admin_username} (password from IF_ADMIN_PASSWORD)", flush=True
        )


def prepare(*, migrate: bool) -> int:
    """What every way of starting the service does first: the schema, then the first admin.

    `serve`, `serve --migrate` and `run` all come here, so each creates the admin the same way; with
    `migrate` false a schema that is not at the newest revision stops the start (2) instead of serving
    errors. Runs once, before any server process is forked: two processes never race to create the admin.
    """
    _settings().data_dir.mkdir(parents=True, exist_ok=True)
    if migrate:
        _upgrade("head")
    else:
        current, head = schema_revisions()
        if current != head:
            print(
                f"error: the database schema is at {current or 'nothing (empty database)'}, this version needs "
                f"{head}: run `instructforge db upgrade` first, or start with `instructforge serve --migrate`",
                file=sys.stderr,
            )
            return 2
    ensure_admin()
    return 0


def schema_revisions() -> tuple[str | None, str | None]:
    """The database's Alembic revision and the newest one this code knows."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from app.db import get_engine
    from app.migrate import alembic_config

    with get_engine().connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current, ScriptDirectory.from_config(alembic_config()).get_current_head()


@needs_database(create=True)
def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    if status := prepare(migrate=args.migrate):
        return status
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="info",
    )
    return 0


def worker_argv(queues: str, concurrency: int, pool: str | None = None, name: str | None = None) -> list[str]:
    """The Celery worker's command line (`name`: its node name, default one per set of queues)."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "-Q",
        queues,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "INFO",
        "-n",
        name or f"{queues.replace(',', '-')}@%h",
    ]
    if pool:
        argv += ["--pool", pool]
    return argv


def cmd_worker(args: argparse.Namespace) -> int:
    argv = worker_argv(args.queues, args.concurrency, args.pool)
    os.execv(argv[0], argv)  # noqa: S606 - replace this process with the Celery worker


@needs_database(create=True)
def cmd_run(args: argparse.Namespace) -> int:
    """Everything on embedded defaults: migrate, create the admin, start API + one worker; Ctrl-C stops all."""
    settings = _settings()
    prepare(migrate=True)

    # One worker process consumes both queues on a laptop: training runs there too (on CPU or a local GPU).
    def start_worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen(worker_argv("default,gpu", settings.worker_concurrency))

    worker = start_worker()
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:create_app",
            "--factory",
            "--host",
            args.host,
            "--port",
            str(args.port),
        ]
    )
    print(
        f"InstructForge is starting at http://{args.host}:{args.port}  (Ctrl-C stops everything)", flush=True
    )
    stopping = False

    def _stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in (api, worker):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stopping and api.poll() is None:
            if worker.poll() is not None:
                # A crashed worker is replaced; its job is handed over when its lease expires.
                print(f"worker exited with {worker.returncode}; starting a new one", flush=True)
                worker = start_worker()
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        _stop()
        deadline = time.time() + 20
        for child in (api, worker):
            try:
                child.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                child.kill()
    return 0


@needs_database(create=False)
def cmd_import(args: argparse.Namespace) -> int:
    """Import a file into a dataset directly (no worker needed): validated whole, then written in batches."""
    from app.datasets.models import Dataset
    from app.db import session_scope
    from app.errors import DomainError
    from app.imports.service import parse_file, write_records
    from app.pipeline.formats.preference import PREFERENCE_FORMATS
    from app.preferences import imports as preference_imports

    path = Path(args.file)
    bad: list[dict[str, Any]] = []
    progress = Progress(
        label=f"validating {path.name}",
        unit="records",
        total=None,
        enabled=wants_progress(args),
        extra=lambda: f"{len(bad)} bad lines skipped" if bad else "",
    )
    try:
        records, bad, fmt = parse_file(path, fmt=args.format, filename=path.name, skip_bad=args.skip_bad)
        progress.phase(label=f"importing {path.name}", unit="records", total=len(records))
        with session_scope() as db:
            if db.get(Dataset, args.dataset) is None:
                progress.close()
                print(f"error: dataset {args.dataset} not found", file=sys.stderr)
                return 2
            key_prefix = f"imp:cli{uuid.uuid4().hex[:10]}"
            write_records(
                sessions=[db],
                dataset_id=args.dataset,
                records=records,
                fmt=fmt,
                key_prefix=key_prefix,
                job_id=None,
                batch_size=_settings().import_batch_size,
                on_batch=lambda _db, rows: progress.advance(rows),
            )
            if fmt in PREFERENCE_FORMATS:  # candidates and verdicts, in the same transaction
                preference_imports.materialize(
                    db, dataset_id=args.dataset, key_prefix=key_prefix, job_id=None
                )
    except DomainError as exc:
        progress.close()
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        progress.close()
    summary(
        title=f"import: {len(records)} records into dataset {args.dataset}",
        rows=[
            ("imported records", len(records)),
            ("format", fmt),
            ("dataset", args.dataset),
            ("bad lines skipped", len(bad)),
            *reason_rows(_bad_fields(bad)),
            ("file", path.absolute()),
        ],
        data={
            "command": "import",
            "imported": len(records),
            "format": fmt,
            "dataset": args.dataset,
            "bad_lines": len(bad),
            "file": str(path.absolute()),
        },
        as_json=args.json,
    )
    for b in bad[:20]:
        print(f"  line {b['line']}: {b['message']}", file=sys.stderr)
    return 0


def _bad_fields(bad: list[dict[str, Any]]) -> dict[str, int]:
    """Bad lines counted by the field at fault (or 'line' when the line as a whole is)."""
    counts: dict[str, int] = {}
    for b in bad:
        field = str(b.get("field") or "line")
        counts[field] = counts.get(field, 0) + 1
    return counts


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register serve, worker, run, db and users, and import."""
    from app.pipeline.formats import FORMATS

    p = subparsers.add_parser(
        "serve",
        help="run the API and web UI",
        description="Run the API and web UI (uvicorn). The database must be at the newest schema: see "
        "`db upgrade` or --migrate.",
    )
    _listen_options(p)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default: %(default)s)")
    p.add_argument(
        "--migrate",
        action="store_true",
        help="apply the database migrations first (without it, an older schema stops the start)",
    )
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser(
        "worker",
        help="run a Celery worker",
        description="Run a Celery worker for background jobs (imports, generation, curation, training).",
    )
    p.add_argument(
        "-Q",
        "--queues",
        default="default",
        help="queues to consume: default, gpu (training), or both as default,gpu (default: %(default)s)",
    )
    p.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=2,
        help="jobs run at the same time, one process each (default: %(default)s)",
    )
    p.add_argument("--pool", default=None, help="Celery pool: prefork (the default), solo or threads")
    p.set_defaults(func=cmd_worker)

    p = subparsers.add_parser(
        "run",
        help="migrate, then start the API and a worker on embedded defaults",
        description="Everything on one machine: apply the migrations, create the first admin, start the "
        "API and one worker for both queues (SQLite database and broker in IF_DATA_DIR unless "
        "IF_DATABASE_URL and IF_BROKER_URL say otherwise). Ctrl-C stops everything.",
    )
    _listen_options(p)
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("db", help="database schema", description="The database schema (Alembic).")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser(
        "upgrade",
        help="apply the Alembic migrations",
        description="Apply the Alembic migrations, creating the database (and the data directory for the "
        "embedded SQLite one) when it does not exist yet.",
    )
    up.add_argument(
        "revision", nargs="?", default="head", help="the revision to upgrade to (default: %(default)s)"
    )
    up.set_defaults(func=cmd_db_upgrade)

    p = subparsers.add_parser("users", help="user accounts", description="User accounts.")
    usub = p.add_subparsers(dest="users_command", required=True)
    uc = usub.add_parser("create", help="create a user", description="Create a user account.")
    uc.add_argument("username", help="the new account's login name")
    uc.add_argument(
        "--role",
        default="annotator",
        choices=["admin", "curator", "annotator"],
        help="what the account may do (default: %(default)s)",
    )
    uc.add_argument(
        "--password", help="the password; else IF_NEW_USER_PASSWORD, else asked for interactively"
    )
    uc.set_defaults(func=cmd_users_create)

    p = subparsers.add_parser(
        "import",
        help="import a file into a dataset",
        description="Import a file into a dataset directly, without a worker: the whole file is validated "
        "first (one bad line and nothing is imported, unless --skip-bad), then written in batches. "
        "Re-running the same import adds nothing twice. Formats: docs/formats.md.",
    )
    p.add_argument("file", help="the file to import: a JSON array or JSON Lines (UTF-8)")
    p.add_argument("--dataset", type=int, required=True, help="the id of the dataset to import into")
    p.add_argument(
        "--format",
        default="auto",
        help=f"the file's format: auto (detected from the content), {', '.join(FORMATS)} "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="import the good lines and list the bad ones (first 20 on stderr) instead of refusing the file",
    )
    add_output_options(p)
    p.set_defaults(func=cmd_import)


def _listen_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="the port to listen on (default: %(default)s)")
