"""The snapshot page (issue 17): stats, ROUGE-L histogram and downloads, reached from the dataset page."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.records.schemas import RecordFilter
from app.snapshots import service as snapshots
from tests.conftest import serve_from
from tests.factories import make_dataset, make_project, make_records, make_user
from tests.ui.test_pages import login


def _snapshot(db: Session, name: str = "first <b>cut</b>") -> tuple[Any, Any]:
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    make_records(db, dataset, 6, status="accepted", label="maths")
    make_records(db, dataset, 2, status="accepted", source="self_instruct", instruction="Name a colour.")
    snap = snapshots.create_snapshot(
        db=db,
        user=curator,
        dataset_id=dataset.id,
        name=name,
        description="",
        flt=RecordFilter(status=["accepted"]),
    )
    return curator, snap


def test_snapshot_page_shows_counts_breakdowns_and_rouge_histogram(client: Any, db: Session):
    curator, snap = _snapshot(db)
    login(client, curator)
    page = client.get(f"/ui/snapshots/{snap.id}")
    assert page.status_code == 200
    html = page.text
    assert "first &lt;b&gt;cut&lt;/b&gt;" in html and "<b>cut</b>" not in html
    assert snap.content_hash in html and '<dd data-role="records">8</dd>' in html
    for title in (
        "By source",
        "By label (top 50)",
        "Prompt length",
        "Max ROUGE-L to the rest of the snapshot",
    ):
        assert title in html
    assert "<title>self_instruct: 2</title>" in html and "<title>human: 6</title>" in html
    assert "<title>maths: 6</title>" in html
    # The two identical instructions score 1.0 against each other; the six numbered ones are near-duplicates.
    rouge = snap.stats["max_rouge_l_hist"]
    assert rouge.get("1.0") == 2
    assert f"<title>1.0: {rouge['1.0']}</title>" in html


def test_snapshot_page_is_hidden_from_other_projects(client: Any, db: Session):
    _, snap = _snapshot(db)
    outsider = make_user(db, "curator")
    login(client, outsider)
    assert client.get(f"/ui/snapshots/{snap.id}").status_code == 404


def test_dataset_page_links_to_the_snapshot_page_and_its_split_export_downloads(
    client: Any, db: Session, browser_page: Any
):
    curator, snap = _snapshot(db, name="v1")
    login(client, curator)
    serve_from(client, browser_page)
    browser_page.goto(f"http://testserver/ui/datasets/{snap.dataset_id}")
    browser_page.click(f'a[href="/ui/snapshots/{snap.id}"]')
    browser_page.wait_for_url(f"**/ui/snapshots/{snap.id}")
    assert browser_page.locator("[data-role=hash]").inner_text() == snap.content_hash
    if shots := os.environ.get("IF_UI_SCREENSHOTS"):  # a folder: refresh docs/screenshots/snapshot.png
        Path(shots).mkdir(parents=True, exist_ok=True)
        browser_page.screenshot(path=str(Path(shots) / "snapshot.png"), full_page=True)
    form = browser_page.locator("form[data-role=export]")
    form.locator("select[name=format]").select_option("openai")
    form.locator("input[name=val_fraction]").fill("0.25")
    form.locator("input[name=seed]").fill("3")
    form.locator("input[name=bundle]").check()
    with browser_page.expect_download() as info:
        form.locator("button[type=submit]").click()
    with zipfile.ZipFile(io.BytesIO(open(info.value.path(), "rb").read())) as zf:
        names = set(zf.namelist())
        train = zf.read("data/train.jsonl").decode().splitlines()
        val = zf.read("data/validation.jsonl").decode().splitlines()
    assert names == {"README.md", "dataset_info.json", "data/train.jsonl", "data/validation.jsonl"}
    assert (len(train), len(val)) == (6, 2)
    assert json.loads(val[0])["messages"][-1]["role"] == "assistant"
