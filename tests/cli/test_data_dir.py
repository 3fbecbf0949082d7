"""Commands run from any directory: a database that is not there, cannot be created or cannot be reached is
one paragraph saying where it was looked for and how to set it, and exit status 2, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli.terminal import clean_env, through_pipes
from tests.procs import ROOT, free_port


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A directory outside the repository, as a user's home or project folder is."""
    assert ROOT not in tmp_path.parents
    return tmp_path


def _assert_one_clear_paragraph(stderr: str) -> None:
    assert "Traceback" not in stderr and "sqlalchemy" not in stderr.lower()
    assert stderr.startswith("error: ") and "\n\n" not in stderr.strip()


def test_import_outside_the_repository_says_where_the_data_directory_is_and_creates_nothing(
    elsewhere: Path, shared_data: Path
) -> None:
    seeds = shared_data / "self-instruct" / "seed_tasks.jsonl"
    out = through_pipes(["import", str(seeds), "--dataset", "1"], env=clean_env(), cwd=elsewhere)
    assert out.returncode == 2
    _assert_one_clear_paragraph(out.stderr)
    text = " ".join(out.stderr.split())
    assert f"there is no database at {elsewhere / 'data' / 'instructforge.db'}" in text
    assert f"IF_DATA_DIR is not set, so it is ./data in the current directory, {elsewhere}" in text
    assert "set IF_DATA_DIR" in text and "IF_DATABASE_URL" in text and "instructforge db upgrade" in text
    assert out.stdout == ""
    assert list(elsewhere.iterdir()) == []  # no stray data directory, no empty database


def test_users_create_names_the_data_directory_set_by_IF_DATA_DIR(elsewhere: Path) -> None:
    data = elsewhere / "nowhere"
    out = through_pipes(
        ["users", "create", "carol", "--password", "long-password-1"],
        env=clean_env(IF_DATA_DIR=str(data)),
        cwd=elsewhere,
    )
    assert out.returncode == 2
    _assert_one_clear_paragraph(out.stderr)
    assert f"{data} (set by IF_DATA_DIR)" in " ".join(out.stderr.split())
    assert not data.exists()


@pytest.mark.parametrize("obstacle", ["a file named data", "a read-only directory"])
def test_db_upgrade_where_the_data_directory_cannot_be_created_fails_clearly(
    elsewhere: Path, obstacle: str
) -> None:
    if obstacle == "a file named data":
        (elsewhere / "data").write_text("not a directory")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        elsewhere.chmod(0o555)
    try:
        out = through_pipes(["db", "upgrade"], env=clean_env(), cwd=elsewhere)
    finally:
        elsewhere.chmod(0o755)
    assert out.returncode == 2
    _assert_one_clear_paragraph(out.stderr)
    text = " ".join(out.stderr.split())
    assert f"the directory {elsewhere / 'data'} cannot be created" in text
    assert "IF_DATA_DIR" in text and "somewhere this user can write" in text


def test_db_upgrade_outside_the_repository_creates_the_data_directory_and_says_where(elsewhere: Path) -> None:
    out = through_pipes(["db", "upgrade"], env=clean_env(), cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    assert (elsewhere / "data" / "instructforge.db").is_file()
    assert f"database at head: {elsewhere / 'data' / 'instructforge.db'}" in out.stdout


def test_a_database_server_that_cannot_be_reached_fails_clearly_without_its_password(
    elsewhere: Path, shared_data: Path
) -> None:
    url = f"postgresql+psycopg://bob:pa55word-secret@127.0.0.1:{free_port()}/instructforge"
    seeds = shared_data / "self-instruct" / "seed_tasks.jsonl"
    out = through_pipes(
        ["import", str(seeds), "--dataset", "1"], env=clean_env(IF_DATABASE_URL=url), cwd=elsewhere
    )
    assert out.returncode == 2
    _assert_one_clear_paragraph(out.stderr)
    text = " ".join(out.stderr.split())
    assert "cannot be reached" in text and "Connection refused" in text
    assert "The database is IF_DATABASE_URL" in text
    assert "pa55word-secret" not in out.stderr and "bob:***@127.0.0.1" in text


def test_an_empty_database_asks_for_db_upgrade(elsewhere: Path) -> None:
    (elsewhere / "data").mkdir()
    (elsewhere / "data" / "instructforge.db").touch()
    out = through_pipes(
        ["users", "create", "carol", "--password", "long-password-1"], env=clean_env(), cwd=elsewhere
    )
    assert out.returncode == 2
    _assert_one_clear_paragraph(out.stderr)
    assert "has no tables yet: run `instructforge db upgrade`" in " ".join(out.stderr.split())
