"""The `instructforge` CLI on the embedded SQLite default, as a user runs it, and every way of starting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from app.records.models import Record
from tests.procs import ROOT, free_port, wait_http


def _cli(tmp_path, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IF_")}
    env["IF_DATA_DIR"] = str(tmp_path)
    if password:
        env["IF_NEW_USER_PASSWORD"] = password
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_db_upgrade_users_create_and_import_from_the_command_line(tmp_path, shared_data):
    assert _cli(tmp_path, "db", "upgrade").returncode == 0
    made = _cli(tmp_path, "users", "create", "carol", "--role", "curator", password="long-password-1")
    assert made.returncode == 0 and "created curator carol" in made.stdout
    dup = _cli(tmp_path, "users", "create", "carol", password="long-password-1")
    assert dup.returncode == 2 and "taken" in dup.stderr

    engine = create_engine(f"sqlite:///{tmp_path / 'instructforge.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO projects (name, description, created_at, updated_at) "
            "VALUES ('p', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
        )
        conn.exec_driver_sql(
            "INSERT INTO datasets (project_id, name, language, description, guidelines, settings, "
            "created_at, updated_at) VALUES (1, 'd', 'en', '', '', '{}', CURRENT_TIMESTAMP, "
            "CURRENT_TIMESTAMP)"
        )
    seeds = shared_data / "self-instruct" / "seed_tasks.jsonl"
    out = _cli(tmp_path, "import", str(seeds), "--dataset", "1")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)  # not a terminal: the summary is one JSON line
    assert (summary["imported"], summary["format"], summary["dataset"]) == (175, "self_instruct", 1)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Record.__table__)) == 175

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": 3, "output": "b"}\n')
    refused = _cli(tmp_path, "import", str(bad), "--dataset", "1", "--format", "alpaca")
    assert refused.returncode == 2 and "line 2" in refused.stderr and "instruction" in refused.stderr
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Record.__table__)) == 175


def _start(tmp_path, *args: str, **env_extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IF_")}
    env.update(IF_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1", **env_extra)
    log = tmp_path / f"{args[0]}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, log


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal: `run` stops its children too
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize(
    "steps",
    [[["serve", "--migrate"]], [["db", "upgrade"], ["serve"]], [["run"]]],
    ids=["serve --migrate", "db upgrade, then serve", "run"],
)
def test_every_way_of_starting_creates_the_admin_with_IF_ADMIN_PASSWORD(tmp_path, steps):
    port = free_port()
    *before, start = steps
    for step in before:
        assert _cli(tmp_path / "data", *step).returncode == 0
    proc, log = _start(tmp_path, *start, "--port", str(port), IF_ADMIN_PASSWORD="chosen-admin-pw")
    try:
        wait_http(f"http://127.0.0.1:{port}/api/v1/health", proc, log, timeout=90)
        login = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/auth/tokens",
            json={"username": "admin", "password": "chosen-admin-pw", "name": "t"},
        )
    finally:
        _stop(proc)
    assert login.status_code == 201, (login.text, log.read_text()[-3000:])
    text = log.read_text()
    assert "created admin account admin (password from IF_ADMIN_PASSWORD)" in text
    assert "chosen-admin-pw" not in text


@pytest.mark.slow
def test_serve_without_migrate_refuses_a_database_that_is_not_upgraded(tmp_path):
    out = _cli(tmp_path / "data", "serve", "--port", str(free_port()))
    assert out.returncode == 2
    assert "instructforge db upgrade" in out.stderr and "--migrate" in out.stderr
    assert _cli(tmp_path / "data", "db", "upgrade").returncode == 0


@pytest.mark.slow
def test_a_generated_admin_password_is_printed_on_the_first_start_only(tmp_path):
    assert _cli(tmp_path / "data", "db", "upgrade").returncode == 0
    for start in (1, 2):
        port = free_port()
        proc, log = _start(tmp_path, "serve", "--port", str(port))
        try:
            wait_http(f"http://127.0.0.1:{port}/api/v1/health", proc, log, timeout=90)
        finally:
            _stop(proc)
        printed = log.read_text().count("First start: created admin account")
        assert printed == 1, log.read_text()[-3000:]
