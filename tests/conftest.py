"""Test infrastructure: a real PostgreSQL database per run (and an SQLite file), migrated with Alembic.

Most tests run inside an outer transaction that is rolled back (fast, isolated). Tests that talk to
other processes (real Celery workers, the served app) use `committed` data and clean up after.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TEST_RUN = uuid.uuid4().hex[:8]
PG_ADMIN_URL = os.environ.get("IF_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("IF_TEST_REDIS_URL", "redis://127.0.0.1:6379")
PG_DB = f"if_test_{TEST_RUN}"
PG_URL = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{PG_DB}"
_TMP = Path(tempfile.mkdtemp(prefix=f"if-test-{TEST_RUN}-"))
SQLITE_URL = f"sqlite:///{_TMP / 'test.db'}"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Settings are read once per process: fix them before any app module is imported.
os.environ.update(
    IF_ENV="test",
    IF_DATABASE_URL=PG_URL,
    IF_DATA_DIR=str(_TMP / "data"),
    IF_BROKER_URL="memory://",
    IF_SECRET_KEY="test-secret-" + "x" * 32,
)

from sqlalchemy import Engine, create_engine, event, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from app.db import make_engine  # noqa: E402
from app.migrate import upgrade  # noqa: E402


def _create_pg_database() -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_DB}"'))
        conn.execute(text(f'CREATE DATABASE "{PG_DB}"'))
    admin.dispose()


def _drop_pg_database() -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{PG_DB}'")
        )
        conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_DB}"'))
    admin.dispose()


_ENGINES: dict[str, Engine] = {}


def engine_for(backend: str) -> Engine:
    if backend not in _ENGINES:
        if backend == "postgresql":
            _create_pg_database()
            upgrade(PG_URL)
            _ENGINES[backend] = make_engine(PG_URL)
        else:
            upgrade(SQLITE_URL)
            engine = make_engine(SQLITE_URL)

            # pysqlite's own transaction handling breaks SAVEPOINTs: take over BEGIN ourselves.
            @event.listens_for(engine, "connect")
            def _no_pysqlite_tx(dbapi_conn: Any, _: Any) -> None:
                dbapi_conn.isolation_level = None

            @event.listens_for(engine, "begin")
            def _begin(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN")

            _ENGINES[backend] = engine
    return _ENGINES[backend]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for engine in _ENGINES.values():
        engine.dispose()
    if "postgresql" in _ENGINES:
        _drop_pg_database()


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """Parametrises a test over both databases: the parts that touch SQL must behave the same."""
    return str(request.param)


@pytest.fixture
def pg() -> str:
    return "postgresql"


def _rollback_session(engine: Engine) -> Iterator[Session]:
    conn = engine.connect()
    outer = conn.begin()
    session = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()
        outer.rollback()
        conn.close()


@pytest.fixture
def db(request: pytest.FixtureRequest) -> Iterator[Session]:
    """A session inside a transaction rolled back after the test. PostgreSQL unless `backend` is used."""
    backend = request.getfixturevalue("backend") if "backend" in request.fixturenames else "postgresql"
    yield from _rollback_session(engine_for(backend))


def unit_of_work_on(db: Session) -> Any:
    """A stand-in for app.deps.get_db that runs each request in a savepoint of the test's transaction:
    released when the handler returns, rolled back when it (or the flush) fails; the test's own data stays
    either way. (A service that commits on its own, e.g. before it enqueues a job, has released it already.)"""

    def _db() -> Iterator[Session]:
        request_tx = db.begin_nested()
        try:
            yield db
            if request_tx.is_active:
                request_tx.commit()
        except BaseException:
            if request_tx.is_active:
                request_tx.rollback()
            raise

    return _db


@pytest.fixture
def client(db: Session) -> Iterator[Any]:
    """The real app, in-process, on the test's session (its writes roll back with the test)."""
    from fastapi.testclient import TestClient

    from app.deps import get_db
    from app.main import create_app

    app = create_app()

    app.dependency_overrides[get_db] = unit_of_work_on(db)
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA}")
    return SHARED_DATA


def truncate_all(engine: Engine) -> None:
    from app.base import Base

    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())


@pytest.fixture
def committed(backend: str) -> Iterator[Engine]:
    """The whole app (jobs, runner, services) on committed data in the backend's test database: the
    process's settings point at it for the test, as IF_DATABASE_URL would."""
    from app.config import get_settings
    from app.db import get_engine, get_sessionmaker

    engine = engine_for(backend)
    truncate_all(engine)
    settings = get_settings()
    before = settings.database_url
    settings.database_url = engine.url.render_as_string(hide_password=False)
    get_engine.cache_clear()
    get_sessionmaker.cache_clear()
    try:
        yield engine
    finally:
        get_engine().dispose()
        settings.database_url = before
        get_engine.cache_clear()
        get_sessionmaker.cache_clear()
        truncate_all(engine)


@pytest.fixture
def committed_pg() -> Iterator[Engine]:
    """Committed data in the test PostgreSQL database, for tests with real worker processes."""
    engine = engine_for("postgresql")
    truncate_all(engine)
    yield engine
    truncate_all(engine)


# Marks a Redis database as a test run's: one holding this key (and no lock) is a finished run's leftover.
_REDIS_MARK = "instructforge:test-run"
_REDIS_CLAIM: list[tuple[int, Any]] = []  # this run's database and its lock file, open until the run ends


def _redis_db_of_this_run() -> int:
    """A Redis database no other test run on this machine holds, claimed for the whole run.

    A lock file per database number (flock, released by the kernel however the run ends) keeps two runs
    apart; a database with keys that are not a test run's (a local service's) is never taken, and neither
    is database 0, where services keep theirs by default.
    """
    import fcntl

    import redis

    if _REDIS_CLAIM:
        return int(_REDIS_CLAIM[0][0])
    server = redis.Redis.from_url(REDIS_URL)
    count = int(server.config_get("databases").get("databases", 16))
    where = REDIS_URL.split("//", 1)[-1].replace(":", "-").replace("/", "-")
    for n in range(1, count):
        lock = (Path(tempfile.gettempdir()) / f"instructforge-test-redis-{where}-{n}.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        r = redis.Redis.from_url(f"{REDIS_URL}/{n}")
        if r.dbsize() == 0 or r.exists(_REDIS_MARK):
            r.flushdb()
            r.set(_REDIS_MARK, TEST_RUN)
            _REDIS_CLAIM.append((n, lock))
            return n
        lock.close()  # someone's data: not ours to flush
    pytest.fail(f"no free Redis database at {REDIS_URL}: each test run needs one of 1..{count - 1} to itself")


def flushed_redis_url() -> str:
    """This run's own Redis database (see _redis_db_of_this_run), emptied (but for this run's mark)."""
    import redis

    url = f"{REDIS_URL}/{_redis_db_of_this_run()}"
    r = redis.Redis.from_url(url)
    r.flushdb()
    r.set(_REDIS_MARK, TEST_RUN)
    return url


@pytest.fixture
def redis_url() -> Iterator[str]:
    """This run's own Redis database, flushed before and after the test."""
    yield flushed_redis_url()
    flushed_redis_url()


@pytest.fixture
def teacher(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The fake OpenAI-compatible teacher on a free port, configured as the teacher named "fake"."""
    import json

    from app.config import get_settings
    from tests.fake_teacher import FakeTeacher

    with FakeTeacher.start() as t:
        config = json.dumps(
            [
                {
                    "name": "fake",
                    "base_url": t.base_url,
                    "model": "fake-model",
                    "max_concurrency": 8,
                    "price_in_per_1k": 0.001,
                    "price_out_per_1k": 0.002,
                    "backoff_base_s": 0.05,
                    "backoff_max_s": 0.2,
                    "max_retries": 2,
                }
            ]
        )
        monkeypatch.setattr(get_settings(), "teachers", config)
        t.config = config  # type: ignore[attr-defined]
        yield t


# --- a real browser on the in-process app ------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def browser_page() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.set_default_timeout(30_000)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        yield page
        context.close()
        browser.close()
        assert page.errors == []


def serve_from(client: Any, page: Any) -> None:
    """Answer every request of the page from the in-process app (the test's session and cookies)."""

    def handle(route: Any) -> None:
        req = route.request
        resp = client.request(
            req.method,
            req.url,
            headers={k: v for k, v in req.headers.items() if k.lower() != "cookie"},
            content=req.post_data_buffer,
        )
        skip = {"content-encoding", "content-length", "transfer-encoding"}
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in skip}
        route.fulfill(status=resp.status_code, headers=headers, body=resp.content)

    page.route("http://testserver/**", handle)
