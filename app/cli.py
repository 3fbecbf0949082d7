"""`instructforge` command line: serve, worker, run (everything, embedded), users, db, import, and the
pipeline commands (dedup, filter, generate) that work without the service."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def _settings() -> Any:
    from app.config import get_settings

    return get_settings()


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from app.migrate import upgrade

    _settings().data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(revision=args.revision)
    print(f"database at {args.revision}: {_settings().resolved_database_url.split('@')[-1]}")
    return 0


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
        cmd_db_upgrade(argparse.Namespace(revision="head"))
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


def worker_argv(queues: str, concurrency: int, pool: str | None = None) -> list[str]:
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
        f"{queues.replace(',', '-')}@%h",
    ]
    if pool:
        argv += ["--pool", pool]
    return argv


def cmd_worker(args: argparse.Namespace) -> int:
    argv = worker_argv(args.queues, args.concurrency, args.pool)
    os.execv(argv[0], argv)  # noqa: S606 - replace this process with the Celery worker


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


def cmd_import(args: argparse.Namespace) -> int:
    """Import a file into a dataset directly (no worker needed): validated whole, then written in batches."""
    from app.config import get_settings
    from app.datasets.models import Dataset
    from app.db import session_scope
    from app.errors import DomainError
    from app.imports.service import parse_file, write_records

    path = Path(args.file)
    try:
        records, bad, fmt = parse_file(path, fmt=args.format, filename=path.name, skip_bad=args.skip_bad)
        with session_scope() as db:
            if db.get(Dataset, args.dataset) is None:
                print(f"error: dataset {args.dataset} not found", file=sys.stderr)
                return 2
            import uuid

            write_records(
                sessions=[db],
                dataset_id=args.dataset,
                records=records,
                fmt=fmt,
                key_prefix=f"imp:cli{uuid.uuid4().hex[:10]}",
                job_id=None,
                batch_size=get_settings().import_batch_size,
            )
    except DomainError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(
        f"imported {len(records)} records ({fmt}) into dataset {args.dataset}; {len(bad)} bad lines skipped"
    )
    for b in bad[:20]:
        print(f"  line {b['line']}: {b['message']}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instructforge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the API + web UI")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--migrate", action="store_true", help="apply migrations first (else: refuse an old schema)"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a Celery worker")
    p.add_argument("-Q", "--queues", default="default", help="default, gpu, or both: default,gpu")
    p.add_argument("-c", "--concurrency", type=int, default=2)
    p.add_argument("--pool", default=None, help="prefork (default), solo, threads")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("run", help="migrate and start API + worker on embedded defaults")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("db", help="database schema")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser("upgrade", help="apply Alembic migrations")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=cmd_db_upgrade)

    p = sub.add_parser("users", help="user accounts")
    usub = p.add_subparsers(dest="users_command", required=True)
    uc = usub.add_parser("create", help="create a user")
    uc.add_argument("username")
    uc.add_argument("--role", default="annotator", choices=["admin", "curator", "annotator"])
    uc.add_argument("--password", help="or IF_NEW_USER_PASSWORD, or asked interactively")
    uc.set_defaults(func=cmd_users_create)

    p = sub.add_parser("import", help="import a file into a dataset")
    p.add_argument("file")
    p.add_argument("--dataset", type=int, required=True)
    p.add_argument("--format", default="auto")
    p.add_argument("--skip-bad", action="store_true")
    p.set_defaults(func=cmd_import)

    for module in ("app.pipeline.curate_cli", "app.pipeline.generate_cli"):
        try:
            import_module(module).add_cli(sub)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.func
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
