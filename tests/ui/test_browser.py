"""The web UI in a real headless Chromium (Debian's package, driven by Playwright) against the app served by
uvicorn on the test PostgreSQL database, with a real Celery worker on Redis.

One server and one worker serve the whole module (starting them per test would triple the runtime); each
test has its own browser context and its own dataset. Set IF_UI_SCREENSHOTS=docs/screenshots to refresh the
README's screenshots.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.conftest import PG_URL, SHARED_DATA, engine_for, flushed_redis_url, truncate_all
from tests.factories import PASSWORD, make_dataset, make_project, make_user, token_for
from tests.procs import free_port, kill, service_env, start_api, start_worker

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

from app.datasets.models import Dataset  # noqa: E402
from app.records.models import Record, RecordRevision, ReviewEvent  # noqa: E402

XSS = [
    "<script>window.__xss = 'script'</script>",
    "<img src=x onerror=\"window.__xss = 'img'\">",
    '"><svg onload="window.__xss=\'svg\'"></svg>',
]
SHOTS = os.environ.get("IF_UI_SCREENSHOTS")
pytestmark = pytest.mark.browser


def seed_tasks() -> list[dict[str, Any]]:
    """The Self-Instruct seed tasks (real, human-written), or plain synthetic tasks without the shared data."""
    path = SHARED_DATA / "self-instruct" / "seed_tasks.jsonl"
    if path.is_file():
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [
        {"instruction": f"Describe item {i}.", "instances": [{"input": "", "output": f"Item {i}."}]}
        for i in range(60)
    ]


@dataclass
class Stack:
    base: str
    engine: Engine
    users: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, int] = field(default_factory=dict)
    records: dict[str, list[int]] = field(default_factory=dict)
    tokens: dict[str, dict[str, str]] = field(default_factory=dict)


def _records(db: Session, dataset_id: int, tasks: list[dict[str, Any]], **extra: Any) -> list[int]:
    rows = []
    for i, t in enumerate(tasks):
        inst = t["instances"][0]
        rows.append(
            Record(
                dataset_id=dataset_id,
                instruction=t["instruction"],
                input=inst.get("input", ""),
                output=inst.get("output", ""),
                source="seed" if i % 3 else "self_instruct",
                is_classification=t.get("is_classification"),
                **extra,
            )
        )
    db.add_all(rows)
    db.flush()
    return [r.id for r in rows]


def _seed(engine: Engine, stack: Stack) -> None:
    tasks = seed_tasks()
    rng = random.Random(7)
    with Session(engine) as db:
        admin, curator, annotator = (
            make_user(db, "admin"),
            make_user(db, "curator"),
            make_user(db, "annotator"),
        )
        project = make_project(db, (curator, "curator"), (annotator, "annotator"), name="Support assistant")
        stranger = make_project(db, name="Someone else's project")
        for name in ("review", "edit", "xss", "import", "dedup"):
            stack.datasets[name] = make_dataset(db, project, name=f"{name} set").id
        stack.datasets["stranger"] = make_dataset(db, stranger).id
        ds = db.get(Dataset, stack.datasets["review"])
        assert ds is not None
        ds.guidelines = (
            "Accept answers that are correct and complete.\nReject unsafe or wrong ones, with a reason."
        )
        ids = _records(db, ds.id, tasks[:25])
        for rid, other in zip(ids[5:15], ids[:10], strict=True):
            rec = db.get(Record, rid)
            assert rec is not None
            rec.nn_record_id, rec.nn_score = other, round(rng.uniform(0.2, 0.95), 3)
            rec.judge_score = rng.choice([2.0, 3.5, 4.0, 5.0])
            rec.meta = {"judge": {"score": rec.judge_score, "rationale": "Clear and correct."}}
        stack.records["review"] = ids
        stack.records["edit"] = _records(db, stack.datasets["edit"], tasks[30:32])
        xss = [
            Record(
                dataset_id=stack.datasets["xss"],
                instruction=f"Repeat this: {payload}",
                input=payload,
                output=f"Sure: {payload}",
                label=payload[:60],
                source="import:alpaca",
                meta={
                    "judge": {"score": 1.0, "rationale": payload},
                    "rules": [{"code": "html", "detail": payload}],
                },
            )
            for payload in XSS
        ]
        db.add_all(xss)
        db.flush()
        stack.records["xss"] = [r.id for r in xss]
        stack.records["dedup"] = _records(db, stack.datasets["dedup"], tasks[:40] + tasks[:10])
        stack.users = {"admin": admin.username, "curator": curator.username, "annotator": annotator.username}
        stack.tokens = {"curator": token_for(db, curator)}
        db.commit()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("ui")
    engine = engine_for("postgresql")
    truncate_all(engine)
    broker = flushed_redis_url()  # this run's own database: another run's queue is never touched
    port = free_port()
    env = service_env(
        database_url=PG_URL,
        broker_url=broker,
        data_dir=tmp / "data",
        IF_IMPORT_INLINE_MAX_BYTES="2000",  # so that an upload through the form becomes a job with progress
        IF_IMPORT_BATCH_SIZE="40",
    )
    s = Stack(base=f"http://127.0.0.1:{port}", engine=engine)
    _seed(engine, s)
    api = start_api(env, tmp / "api.log", port)
    worker = start_worker(env, tmp / "worker.log")
    try:
        yield s
    finally:
        kill(api)
        kill(worker)
        truncate_all(engine)
        flushed_redis_url()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, stack: Stack) -> Iterator[Any]:
    # CSP is bypassed so that the XSS test proves the escaping itself, not only the policy behind it.
    context = browser.new_context(
        base_url=stack.base, viewport={"width": 1400, "height": 900}, bypass_csp=True
    )
    context.set_default_timeout(45_000)  # generous: CI machines are small and busy
    pg = context.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    context.close()
    assert pg.errors == []


def login(page: Any, stack: Stack, who: str) -> None:
    page.goto("/login")
    if SHOTS and who == "annotator":  # the form after a mistyped password: the username is kept
        page.fill("input[name=username]", stack.users[who])
        page.fill("input[name=password]", "mistyped")
        page.keyboard.press("Enter")
        page.wait_for_selector("p.error")
        page.screenshot(path=str(Path(SHOTS) / "login.png"))
    page.fill("input[name=username]", stack.users[who])
    page.fill("input[name=password]", PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url("**/ui")


def shot(page: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / name), full_page=name != "review.png")


def current_id(page: Any) -> int:
    return int(page.inner_text("[data-role=rid]").split()[0].lstrip("#"))


def test_annotator_reviews_20_records_with_the_keyboard_only(page: Any, stack: Stack) -> None:
    login(page, stack, "annotator")
    ds, ids = stack.datasets["review"], stack.records["review"]
    page.goto(f"/ui/datasets/{ds}/review")
    page.wait_for_selector("[data-role=rid]:has-text('#')")
    assert "Accept answers that are correct" in page.inner_text(".guidelines")
    assert "a accept" in page.inner_text(".shortcuts")
    api_calls: list[str] = []
    page.on("request", lambda r: api_calls.append(r.url) if "/api/" in r.url else None)
    expected: dict[int, tuple[str, str | None, int | None]] = {}
    actions = 0
    for i in range(20):
        # Keys come faster than any person types, so the buffer can run dry: wait for the record to show.
        page.wait_for_selector(f"[data-role=rid]:has-text('#{ids[i]} ')")
        if i % 3 == 0:
            page.keyboard.press("r")
            page.keyboard.type("incorrect")
            page.keyboard.press("Enter")
            expected[ids[i]] = ("rejected", "incorrect", None)
            actions += 1
        elif i % 3 == 1:
            page.keyboard.press("4")
            page.keyboard.press("a")
            expected[ids[i]] = ("accepted", "human", 4)
            actions += 2
        else:
            if i == 5:
                shot(page, "review.png")
            page.keyboard.press("a")
            expected[ids[i]] = ("accepted", "human", None)
            actions += 1
        # At a person's pace: the decision is saved before the next key (see docs/ui.md, known issues).
        page.wait_for_function(
            f"document.querySelector('[data-role=progress]').textContent.startsWith('{i + 1} reviewed')"
        )
    page.wait_for_function(
        "document.querySelector('[data-role=progress]').textContent.startsWith('20 reviewed')"
    )
    assert len(api_calls) <= actions, api_calls
    with Session(stack.engine) as db:
        rows = {r.id: r for r in db.scalars(select(Record).where(Record.id.in_(ids[:20])))}
        assert {rid: (r.status, r.reason, r.rating) for rid, r in rows.items()} == expected
        untouched = db.scalars(select(Record.status).where(Record.id.in_(ids[20:]))).all()
        assert set(untouched) == {"pending"}
        events = db.scalars(
            select(ReviewEvent).where(ReviewEvent.dataset_id == ds).order_by(ReviewEvent.id)
        ).all()
        assert len(events) == actions and all(e.at is not None for e in events)
        assert [e.at for e in events] == sorted(e.at for e in events)
    page.keyboard.press("u")
    page.wait_for_selector("[data-role=notice-text]:has-text('Undid accept')")
    assert current_id(page) == ids[19]
    with Session(stack.engine) as db:
        assert db.get(Record, ids[19]).status == "pending"  # type: ignore[union-attr]


def test_edit_in_place_shows_history_and_never_loses_an_edit(page: Any, stack: Stack) -> None:
    login(page, stack, "annotator")
    rid = stack.records["edit"][0]
    page.goto(f"/ui/datasets/{stack.datasets['edit']}/review")
    assert current_id(page) == rid
    page.keyboard.press("e")
    page.fill("textarea[data-field=output]", "A corrected answer.")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("[data-role=history] ins:has-text('corrected')")
    with Session(stack.engine) as db:
        rec = db.get(Record, rid)
        assert rec is not None and rec.output == "A corrected answer." and rec.version == 2
        assert db.scalars(select(RecordRevision.version).where(RecordRevision.record_id == rid)).all() == [
            1,
            2,
        ]
    # Someone else saves first: our save is refused with a clear message and our text stays in the editor.
    httpx.patch(
        f"{stack.base}/api/v1/records/{rid}",
        json={"version": 2, "output": "Their answer."},
        headers=stack.tokens["curator"],
    ).raise_for_status()
    page.keyboard.press("e")
    page.fill("textarea[data-field=output]", "My better answer.")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("[data-role=banner-text]:has-text('changed by someone else')")
    assert page.input_value("textarea[data-field=output]") == "My better answer."
    page.click("[data-role=reload]")
    page.wait_for_selector("[data-role=banner-text]:has-text('Your text is still in the editor')")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("[data-role=history] ins:has-text('better')")
    with Session(stack.engine) as db:
        assert db.get(Record, rid).output == "My better answer."  # type: ignore[union-attr]
    page.goto(f"/ui/records/{rid}/history")
    assert page.locator("del").count() >= 1 and "My better answer" not in page.inner_text("del")
    assert page.locator("ins:has-text('better')").count() == 1


def test_annotator_opening_admin_pages_is_refused(page: Any, stack: Stack) -> None:
    login(page, stack, "annotator")
    ds = stack.datasets["review"]
    for path, status in [
        (f"/ui/datasets/{ds}", 403),
        (f"/ui/datasets/{ds}/jobs/new/dedup", 403),
        ("/ui/users", 403),
        (f"/ui/datasets/{stack.datasets['stranger']}/review", 404),
    ]:
        resp = page.goto(path)
        assert resp.status == status, path
    assert "Not allowed" in page.goto(f"/ui/datasets/{ds}").text()
    page.goto("/ui")
    assert page.locator(f"a[href='/ui/datasets/{ds}/review']").count() == 1
    assert page.locator(f"a[href='/ui/datasets/{ds}']").count() == 0


def test_llm_and_upload_text_stays_inert(page: Any, stack: Stack) -> None:
    login(page, stack, "curator")
    ds = stack.datasets["xss"]
    pages = [
        f"/ui/datasets/{ds}/review",
        f"/ui/datasets/{ds}/records",
        f"/ui/datasets/{ds}",
        f"/ui/records/{stack.records['xss'][1]}/history",
    ]
    for path in pages:
        page.goto(path)
        page.wait_for_load_state("load")
        assert page.evaluate("window.__xss") is None, path
    page.goto(f"/ui/datasets/{ds}/review")
    for i, payload in enumerate(XSS):
        text = page.inner_text("[data-role=fields]")
        assert f"Sure: {payload}" in text and payload in page.inner_text("[data-role=machine]")
        assert (
            page.locator("[data-role=fields] img, [data-role=fields] script, [data-role=fields] svg").count()
            == 0
        )
        if i < len(XSS) - 1:
            page.keyboard.press("j")
    page.goto(f"/ui/datasets/{ds}/records")
    assert XSS[0] in page.inner_text("table.records")
    assert page.evaluate("window.__xss") is None and page.dialogs == []


def test_curator_imports_through_the_form_and_the_figures_follow_without_a_reload(
    page: Any, stack: Stack
) -> None:
    path = SHARED_DATA / "self-instruct" / "seed_tasks.jsonl"
    if not path.is_file():
        pytest.skip(f"real datasets not found at {SHARED_DATA}")
    login(page, stack, "curator")
    page.goto(f"/ui/datasets/{stack.datasets['import']}")
    page.evaluate("window.__same_document = true")  # a reload would lose it
    assert page.inner_text("[data-role=record-total]") == "0"
    page.set_input_files("#import-form input[type=file]", str(path))
    page.select_option("#import-form select[name=format]", "self_instruct")
    page.click("#import-form button[type=submit]")
    # The upload is large enough to become a job: the page follows it, then redraws the figures.
    page.wait_for_selector("[data-role=import-result]:has-text('succeeded')", timeout=60_000)
    with Session(stack.engine) as db:
        n = len(db.scalars(select(Record.id).where(Record.dataset_id == stack.datasets["import"])).all())
    assert n >= 175
    assert f"imported {n} records" in page.inner_text("[data-role=import-result]")
    page.wait_for_selector(f"[data-role=record-total]:text-is('{n}')")
    assert f"<title>seed: {n}</title>" in page.inner_html("#dataset-stats")  # the "By source" bar
    assert page.evaluate("window.__same_document") is True
    # The job's own page, one click away, saw it reach 100 %.
    page.click("[data-role=import-result] a")
    page.wait_for_url("**/ui/jobs/*")
    page.wait_for_selector("[data-role=pct]:has-text('100%')", timeout=60_000)
    assert page.inner_text("[data-role=status]") == "succeeded"
    page.goto(f"/ui/datasets/{stack.datasets['review']}")
    page.wait_for_selector("svg")
    shot(page, "dataset.png")


def test_curator_starts_a_dedup_job_from_its_form_and_sees_100_percent(page: Any, stack: Stack) -> None:
    login(page, stack, "curator")
    ds = stack.datasets["dedup"]
    page.goto(f"/ui/datasets/{ds}/jobs/new/dedup")
    assert page.input_value("input[name=threshold]") == "0.7"
    page.click("main button[type=submit]")
    page.wait_for_url("**/ui/jobs/*")
    page.wait_for_selector("[data-role=pct]:has-text('100%')", timeout=60_000)
    assert page.inner_text("[data-role=status]") == "succeeded"
    with Session(stack.engine) as db:
        dups = set(db.scalars(select(Record.id).where(Record.dataset_id == ds, Record.status == "filtered")))
    assert set(stack.records["dedup"][40:]) <= dups  # the ten tasks seeded twice
    page.goto("/ui/jobs")
    shot(page, "jobs.png")
    page.goto(f"/ui/datasets/{ds}")
    assert page.locator("#groups tbody tr").count() >= 1


def test_root_redirects_to_login_and_logout_ends_the_session(page: Any, stack: Stack) -> None:
    page.goto("/")
    assert page.url.endswith("/login")
    login(page, stack, "annotator")
    page.click("header .logout button")
    page.wait_for_url("**/login")
    assert page.goto("/ui").url.endswith("/login?next=/ui")
