"""A job in words (app/ui/jobview.py): the rules the job page and app/ui/static/jobs.js both follow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.ui.jobview import Row, duration, line, rows, run_time, shown, when


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (None, "–"),
        (0.04, "0.0 s"),
        (4.25, "4.2 s"),
        (59.94, "59.9 s"),
        (59.96, "1 min 00 s"),
        (65, "1 min 05 s"),
        (3599.4, "59 min 59 s"),
        (3599.6, "1 h 00 min"),
        (3600, "1 h 00 min"),
        (7620, "2 h 07 min"),
    ],
)
def test_durations_read_in_seconds_minutes_or_hours(seconds: float | None, words: str) -> None:
    assert duration(seconds) == words


def test_a_job_runs_until_it_finishes_or_until_now_and_not_before_it_starts() -> None:
    start = datetime(2026, 11, 30, 21, 4, 5, 900_000, tzinfo=UTC)
    assert run_time(None, None, start) is None
    assert run_time(start, start + timedelta(seconds=3), start + timedelta(hours=1)) == 3
    assert run_time(start, None, start + timedelta(seconds=8)) == 8
    assert when(start) == "2026-11-30 21:04:05 UTC"  # to the second, as JS's toISOString().slice(0, 19)


def test_values_read_as_words_not_reprs() -> None:
    assert [shown(v) for v in (None, True, False, 3, 2.0, 0.123456, [], ["a", 1], [{"id": 1}])] == [
        "–", "yes", "no", "3", "2", "0.1235", "none", "a, 1", "1 item",
    ]  # fmt: skip
    assert shown({}) == "none" and shown({"a": 1}) == "1 entry"


def test_nested_counts_are_rows_under_their_name_and_unset_filter_fields_are_left_out() -> None:
    table = rows(
        {"kept_tasks": 5, "rejected_by_reason": {"rouge_dup": 3, "blacklist": 2}, "scope": {"q": None}}
    )
    assert table == [
        Row("kept tasks", "5", 0),
        Row("rejected by reason", "", 0),
        Row("rouge_dup", "3", 1),
        Row("blacklist", "2", 1),
        Row("scope", "none", 0),
    ]
    assert line(table) == "kept tasks: 5 · rejected by reason: rouge_dup 3, blacklist 2 · scope: none"
