"""The dataset page in a real headless Chromium on the in-process app: the stats follow an import without a
reload, the charts leave out filtered records unless asked, the export form splits, and a bulk action names
how many records it will change before it changes them."""

from __future__ import annotations

import io
import json
import re
import zipfile
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.datasets.models import Dataset
from app.records.models import Record
from app.records.schemas import RecordFilter
from app.snapshots.service import create_snapshot
from tests.conftest import serve_from
from tests.factories import make_dataset, make_project, make_records, make_user
from tests.ui.test_pages import login


@pytest.fixture
def world(db: Session) -> dict[str, Any]:
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    make_records(db, dataset, 3, instruction="Write a short poem about the sea.", source="seed")
    # Junk curation filtered: repeated, it would top the leading-words chart.
    make_records(
        db, dataset, 6, instruction="Toolformer toolformer API call", status="filtered", reason="rule"
    )
    return {"curator": curator, "ds": dataset.id}


def leading_words(html_or_page: Any) -> list[tuple[str, int]]:
    """The leading-words chart's bars, top first, as (word, count)."""
    html = html_or_page if isinstance(html_or_page, str) else html_or_page.content()
    figure = html.split("Most common leading words</figcaption>", 1)[1].split("</figure>", 1)[0]
    return [(w, int(n)) for w, n in re.findall(r"<title>([^<]*): (\d+)</title>", figure)]


def open_page(client: Any, page: Any, world: dict[str, Any]) -> None:
    login(client, world["curator"])
    serve_from(client, page)
    page.goto(f"http://testserver/ui/datasets/{world['ds']}")
    # Set on this document: a reload would lose it.
    page.evaluate("window.__same_document = true")


def test_filtered_junk_does_not_top_the_leading_words_chart_by_default(client: Any, world: dict[str, Any]):
    login(client, world["curator"])
    default = client.get(f"/ui/datasets/{world['ds']}")
    assert leading_words(default.text) == [("write", 3)]
    assert "the other charts leave out the 6 filtered by curation" in default.text
    everything = client.get(f"/ui/datasets/{world['ds']}?include_filtered=true")
    assert leading_words(everything.text)[0] == ("toolformer", 6)
    # "Records by status" counts every record either way.
    assert "filtered: 6" in default.text and "pending: 3" in default.text


def test_the_filtered_records_choice_redraws_the_charts_without_a_reload(
    client: Any, world: dict[str, Any], browser_page: Any
):
    page = browser_page
    open_page(client, page, world)
    assert leading_words(page) == [("write", 3)]
    page.check('[data-role="stats-options"] input[name="include_filtered"]')
    page.wait_for_function(
        "document.querySelector('#dataset-stats').textContent.includes('Every chart counts')"
    )
    assert leading_words(page)[0] == ("toolformer", 6)
    assert "include_filtered=true" in page.url
    assert page.evaluate("window.__same_document") is True


def test_the_stats_section_alone_shows_an_import_made_since_the_page_opened(
    client: Any, world: dict[str, Any]
):
    """What dataset.js swaps in after an import (the browser side, following an import job, is
    tests/ui/test_browser.py's import test: Chromium hands no file upload to an intercepted request)."""
    csrf = login(client, world["curator"])
    assert 'data-total="9"' in client.get(f"/ui/datasets/{world['ds']}/stats").text
    rows = [{"instruction": f"Translate sentence {i} into French.", "output": "Oui."} for i in range(5)]
    imported = client.post(
        f"/api/v1/datasets/{world['ds']}/import",
        files={"file": ("more.json", json.dumps(rows).encode())},
        data={"format": "alpaca"},
        headers={"X-CSRF-Token": csrf},
    )
    assert imported.status_code == 201, imported.text
    section = client.get(f"/ui/datasets/{world['ds']}/stats").text
    assert section.lstrip().startswith("<section") and 'data-total="14"' in section
    assert leading_words(section) == [("translate", 5), ("write", 3)]
    assert "import:alpaca: 5" in section.split("By source</figcaption>", 1)[1].split("</figure>", 1)[0]


def test_export_with_a_split_downloads_train_and_validation_files(
    client: Any, db: Session, world: dict[str, Any], browser_page: Any
):
    curator = world["curator"]
    make_records(db, db.get_one(Dataset, world["ds"]), 17, status="accepted")
    snap = create_snapshot(
        db=db,
        user=curator,
        dataset_id=world["ds"],
        name="v1",
        description="",
        flt=RecordFilter(status=["accepted"]),
    )
    db.flush()
    page = browser_page
    open_page(client, page, world)
    form = page.locator(f'form[action="/api/v1/snapshots/{snap.id}/export"]')
    form.locator('select[name="format"]').select_option("alpaca_jsonl")
    form.locator('input[name="val_fraction"]').fill("0.2")
    form.locator('input[name="seed"]').fill("7")
    with page.expect_download() as download_info:
        form.locator('button[type="submit"]').click()
    download = download_info.value
    with zipfile.ZipFile(io.BytesIO(open(download.path(), "rb").read())) as bundle:
        names = bundle.namelist()
        lines = {n: bundle.read(n).decode().splitlines() for n in names}
    train = [n for n in names if "train" in n]
    validation = [n for n in names if "validation" in n]
    assert len(train) == 1 and len(validation) == 1, names
    assert (len(lines[train[0]]), len(lines[validation[0]])) == (14, 3)  # 17 records, 20 % held out


def test_a_bulk_action_names_how_many_records_it_will_change_first(
    client: Any, db: Session, world: dict[str, Any], browser_page: Any
):
    page = browser_page
    open_page(client, page, world)
    form = page.locator("#bulk-form")
    form.locator('input[name="status"][value="filtered"]').check()
    form.locator('select[name="target_status"]').select_option("rejected")
    messages: list[str] = []

    def answer(dialog: Any, accept: bool) -> None:
        messages.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda d: answer(d, accept=False))
    form.locator('button[type="submit"]').click()
    for _ in range(100):  # the count comes from the server first
        if messages:
            break
        page.wait_for_timeout(50)
    assert messages == ["Set 6 records matching this filter to rejected?"]
    rejected = select(Record.id).where(Record.dataset_id == world["ds"], Record.status == "rejected")
    db.expire_all()
    assert db.scalars(rejected).all() == []  # dismissed: nothing changed

    page.once("dialog", lambda d: answer(d, accept=True))
    with page.expect_navigation():
        form.locator('button[type="submit"]').click()
    assert messages[-1] == "Set 6 records matching this filter to rejected?"
    db.expire_all()
    assert len(db.scalars(rejected).all()) == 6


def test_the_bulk_count_refuses_a_malformed_filter_naming_the_field(client: Any, world: dict[str, Any]):
    login(client, world["curator"])
    ok = client.get(f"/ui/datasets/{world['ds']}/bulk/count", params={"status": "pending"})
    assert ok.status_code == 200 and ok.json() == {"count": 3}
    bad = client.get(f"/ui/datasets/{world['ds']}/bulk/count", params={"min_nn_score": "lots"})
    assert bad.status_code == 422 and "min_nn_score" in bad.text


def test_the_forms_offer_every_import_and_export_format_and_a_bundle_with_its_card(
    client: Any, db: Session, world: dict[str, Any], browser_page: Any
):
    from app.pipeline.formats import EXPORTERS, FORMATS

    make_records(db, db.get_one(Dataset, world["ds"]), 4, status="accepted")
    snap = create_snapshot(
        db=db,
        user=world["curator"],
        dataset_id=world["ds"],
        name="v1",
        description="",
        flt=RecordFilter(status=["accepted"]),
    )
    db.flush()
    page = browser_page
    open_page(client, page, world)
    imports = page.locator('#import-form select[name="format"] option').all_inner_texts()
    assert imports == ["auto", *FORMATS] and "mt_bench" in imports
    form = page.locator(f'form[action="/api/v1/snapshots/{snap.id}/export"]')
    assert form.locator('select[name="format"] option').all_inner_texts() == list(EXPORTERS)
    form.locator('select[name="format"]').select_option("sharegpt")
    form.locator('input[name="bundle"]').check()
    with page.expect_download() as download_info:
        form.locator('button[type="submit"]').click()
    with zipfile.ZipFile(io.BytesIO(open(download_info.value.path(), "rb").read())) as bundle:
        names = set(bundle.namelist())
        info = json.loads(bundle.read("dataset_info.json"))
    assert {"README.md", "dataset_info.json"} <= names
    assert next(iter(info.values()))["formatting"] == "sharegpt"
