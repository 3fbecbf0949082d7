"""Every long command in a terminal: a bar that moves, then a summary table; through a pipe: one JSON line."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from app.records.models import Record
from tests.cli.terminal import COLUMNS, bar_states, clean_env, in_terminal, through_pipes
from tests.fake_teacher import FakeTeacher

LONG_COMMANDS = ["self-instruct", "evol", "judge", "dedup", "filter", "import"]


@dataclass
class Command:
    args: list[str]
    env: dict[str, str]
    title: str
    """The first line of the summary table."""
    rows: list[str]
    """Row labels the table has."""
    keys: set[str]
    """Keys the JSON summary has."""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeTeacher]:
    # Slow enough answers that a run lasts a few redraws, as a real teacher's do.
    with FakeTeacher.start(latency_ms=100) as fake:
        yield fake


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory whose database has dataset 1."""
    data = tmp_path_factory.mktemp("data")
    assert through_pipes(["db", "upgrade"], env=clean_env(IF_DATA_DIR=str(data))).returncode == 0
    with create_engine(f"sqlite:///{data / 'instructforge.db'}").begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO projects (name, description, created_at, updated_at) "
            "VALUES ('p', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
        )
        conn.exec_driver_sql(
            "INSERT INTO datasets (project_id, name, language, description, guidelines, settings, "
            "created_at, updated_at) VALUES (1, 'd', 'en', '', '', '{}', CURRENT_TIMESTAMP, "
            "CURRENT_TIMESTAMP)"
        )
    return data


def _alpaca(shared_data: Path, tmp_path: Path, n: int) -> str:
    rows = json.loads((shared_data / "codealpaca" / "code_alpaca_2k.json").read_text(encoding="utf-8"))
    path = tmp_path / f"alpaca_{n}.json"
    path.write_text(json.dumps(rows[:n]), encoding="utf-8")
    return str(path)


@pytest.fixture
def command(request, tmp_path, shared_data, fake, dataset_dir) -> Command:
    return make_command(request.param, tmp_path, shared_data, fake, dataset_dir)


def make_command(
    name: str, tmp_path: Path, shared_data: Path, fake: FakeTeacher, dataset_dir: Path
) -> Command:
    teachers = tmp_path / "teachers.json"
    teachers.write_text(
        json.dumps([{"name": "fake", "base_url": fake.base_url, "model": "fake", "max_concurrency": 4}])
    )
    teacher = ["--teacher", "fake", "--teachers-config", str(teachers), "-o", str(tmp_path / "out.jsonl")]
    seeds = str(shared_data / "self-instruct" / "seed_tasks.jsonl")
    code_alpaca = str(shared_data / "codealpaca" / "code_alpaca_2k.json")
    costs = {"calls", "cached_calls", "cost_usd", "stop_reason"}
    env = clean_env()
    if name == "self-instruct":
        return Command(
            ["generate", "self-instruct", "--seeds", seeds, "-n", "20", *teacher],
            env,
            "generate self-instruct: target reached",
            ["kept tasks", "records rejected", "teacher calls", "cost"],
            {"kept_tasks", "records_kept", "rejected_by_reason", *costs},
        )
    if name == "evol":
        return Command(
            ["generate", "evol", "--input", _alpaca(shared_data, tmp_path, 12), "--rounds", "2", *teacher],
            env,
            "generate evol: done",
            ["evolutions kept", "evolutions rejected", "teacher calls", "cost"],
            {"kept", "rejected", "rejected_by_reason", *costs},
        )
    if name == "judge":
        return Command(
            ["generate", "judge", "--input", _alpaca(shared_data, tmp_path, 40), *teacher],
            env,
            "generate judge: done",
            ["kept", "not kept", "mean score", "teacher calls", "cost"],
            {"kept", "rejected", "unscored", "mean_score", "rejected_by_reason", *costs},
        )
    if name == "dedup":
        return Command(
            ["dedup", code_alpaca, "-o", str(tmp_path / "out.jsonl")],
            env,
            "dedup: ",
            ["records", "kept", "rejected", "output"],
            {"input", "kept", "rejected"},
        )
    if name == "filter":
        return Command(
            ["filter", code_alpaca, "-o", str(tmp_path / "out.jsonl")],
            env,
            "filter: ",
            ["records", "kept", "rejected (first rule broken)", "output"],
            {"input", "kept", "funnel"},
        )
    assert name == "import"
    return Command(
        ["import", seeds, "--dataset", "1"],
        clean_env(IF_DATA_DIR=str(dataset_dir)),
        "import: 175 records into dataset 1",
        ["imported records", "format", "bad lines skipped", "file"],
        {"imported", "format", "dataset", "bad_lines"},
    )


@pytest.mark.parametrize("command", LONG_COMMANDS, indirect=True)
def test_in_a_terminal_a_live_bar_moves_then_a_summary_table_is_printed(command: Command) -> None:
    status, output = in_terminal(command.args, env=command.env)
    assert status == 0, output[-3000:]
    states = bar_states(output)
    assert len(set(states)) > 1, output[-3000:]
    assert max(len(state) for state in states) <= COLUMNS  # the counters are cut to fit, never wrapped
    table = output[output.index(command.title) :]
    for label in command.rows:
        assert re.search(rf"^  {re.escape(label)}  ", table, re.MULTILINE), table
    assert "Result(" not in output and "Summary(" not in output and "{" not in table


def test_a_generation_bar_shows_calls_and_cost_as_they_happen(tmp_path, shared_data, fake, dataset_dir):
    command = make_command("self-instruct", tmp_path, shared_data, fake, dataset_dir)
    status, output = in_terminal(command.args, env=command.env)
    assert status == 0, output[-3000:]
    states = bar_states(output)
    calls = [int(m.group(1)) for state in states if (m := re.search(r"calls (\d+)", state))]
    assert len(set(calls)) > 2 and calls == sorted(calls)
    assert all("$" in state for state in states if "calls" in state)
    finished = states[-1]
    assert "20/20 tasks" in finished and "100%" in finished
    assert "records kept" in finished and "rejected" in finished


@pytest.mark.parametrize("command", LONG_COMMANDS, indirect=True)
def test_through_a_pipe_there_is_no_bar_only_one_json_line(command: Command) -> None:
    out = through_pipes(command.args, env=command.env)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and "\r" not in out.stdout, out.stdout
    assert command.keys <= set(json.loads(lines[0]))


def test_json_on_a_terminal_prints_the_json_line_instead_of_the_table(tmp_path, shared_data) -> None:
    src = str(shared_data / "codealpaca" / "code_alpaca_2k.json")
    status, output = in_terminal(["dedup", src, "-o", str(tmp_path / "o.jsonl"), "--json"], env=clean_env())
    assert status == 0, output
    assert bar_states(output)
    summary = json.loads(re.split(r"[\r\n]+", output.strip())[-1])
    assert summary["input"] == 2017 and "dedup:" not in output


def test_no_progress_in_a_terminal_draws_no_bar_but_still_the_table(tmp_path, shared_data) -> None:
    src = str(shared_data / "codealpaca" / "code_alpaca_2k.json")
    status, output = in_terminal(
        ["filter", src, "-o", str(tmp_path / "o.jsonl"), "--no-progress"], env=clean_env()
    )
    assert status == 0, output
    assert not bar_states(output) and "\r\n  kept " in output


def test_import_in_a_terminal_writes_every_record(dataset_dir: Path, shared_data: Path) -> None:
    engine = create_engine(f"sqlite:///{dataset_dir / 'instructforge.db'}")
    with engine.connect() as conn:
        before = conn.scalar(select(func.count()).select_from(Record.__table__))
    seeds = str(shared_data / "self-instruct" / "seed_tasks.jsonl")
    status, output = in_terminal(
        ["import", seeds, "--dataset", "1"], env=clean_env(IF_DATA_DIR=str(dataset_dir))
    )
    assert status == 0, output
    assert any("importing seed_tasks.jsonl" in state and "175/175" in state for state in bar_states(output))
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Record.__table__)) == before + 175
