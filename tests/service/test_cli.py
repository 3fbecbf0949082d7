"""The `instructforge` CLI on the embedded SQLite default, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy import create_engine, func, select

from app.records.models import Record
from tests.procs import ROOT


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
    assert "imported 175 records (self_instruct)" in out.stdout
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Record.__table__)) == 175

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": 3, "output": "b"}\n')
    refused = _cli(tmp_path, "import", str(bad), "--dataset", "1", "--format", "alpaca")
    assert refused.returncode == 2 and "line 2" in refused.stderr and "instruction" in refused.stderr
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Record.__table__)) == 175
