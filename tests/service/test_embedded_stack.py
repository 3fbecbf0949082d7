"""`instructforge run` (what `make run` starts): SQLite database, SQLite broker, API + one worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.procs import ROOT, free_port, wait_http

pytestmark = pytest.mark.slow


def test_run_serves_api_and_login_page_runs_jobs_on_sqlite_broker_and_stops_on_ctrl_c(tmp_path, shared_data):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IF_")}
    env.update(
        IF_DATA_DIR=str(tmp_path / "data"),
        IF_ADMIN_PASSWORD="first-admin-pw",
        PYTHONUNBUFFERED="1",
        IF_IMPORT_INLINE_MAX_BYTES="1000",
        IF_REAPER_INTERVAL_SECONDS="2",
        IF_WORKER_CONCURRENCY="1",
    )
    log = tmp_path / "run.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/api/v1/health", proc, log, timeout=90)
        assert (tmp_path / "data" / "instructforge.db").is_file()
        login_page = httpx.get(f"{base}/login")
        assert login_page.status_code == 200 and "password" in login_page.text.lower()
        tok = httpx.post(
            f"{base}/api/v1/auth/tokens",
            json={"username": "admin", "password": "first-admin-pw", "name": "t"},
        ).json()["token"]
        h = {"Authorization": f"Bearer {tok}"}
        project = httpx.post(f"{base}/api/v1/projects", json={"name": "p"}, headers=h).json()
        dataset = httpx.post(
            f"{base}/api/v1/projects/{project['id']}/datasets", json={"name": "d"}, headers=h
        ).json()
        body = (shared_data / "self-instruct" / "seed_tasks.jsonl").read_bytes()
        queued = httpx.post(f"{base}/api/v1/datasets/{dataset['id']}/import", content=body, headers=h)
        assert queued.status_code == 202, queued.text
        job_id = queued.json()["job_id"]
        deadline = time.time() + 90
        while time.time() < deadline:
            job = httpx.get(f"{base}/api/v1/jobs/{job_id}", headers=h).json()
            if job["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.5)
        assert job["status"] == "succeeded", (job, log.read_text()[-3000:])
        assert job["result"]["imported"] == 175
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends to the whole group
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("instructforge run did not stop on Ctrl-C")
    # Every process of the group gone: the worker's children may take a few seconds on a loaded machine.
    deadline = time.time() + 15
    while True:
        leftovers = subprocess.run(
            ["pgrep", "-g", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        if not leftovers or time.time() > deadline:
            break
        time.sleep(0.5)
    assert leftovers == [], f"processes left running: {leftovers}"
    assert "first-admin-pw" not in log.read_text(), "a password chosen in the environment is never printed"
