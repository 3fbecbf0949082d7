"""Two test runs on one machine (or a run beside a local service) never share a Redis database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

from tests.procs import ROOT

PROBE = """
import redis


def test_probe(redis_url):
    redis.Redis.from_url(redis_url).set("probe", "other run")
    print("PROBE_URL=" + redis_url)
"""


def test_a_second_test_run_gets_another_redis_database_and_leaves_ours_alone(redis_url, tmp_path: Path):
    ours = redis.Redis.from_url(redis_url)
    ours.lpush("default", "a message this run's worker has not taken yet")
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    # A whole second pytest session with the same conftest, as a colleague's `make test` would be.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.conftest",
            str(probe),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    other = next(line.split("=", 1)[1] for line in out.stdout.splitlines() if line.startswith("PROBE_URL="))
    assert other != redis_url
    assert ours.lrange("default", 0, -1) == [b"a message this run's worker has not taken yet"]
    assert ours.get("probe") is None
