"""The nearest-neighbour ROUGE-L figure says which of three things it is: never compared (no dedup run),
compared but no record at or above the dedup's search cutoff ("none ≥ 0.70"), or a real score. The stored
0.0 of "nothing found above the cutoff" is never shown or counted as a score of 0.0."""

from __future__ import annotations

from typing import Any

import pytest

from app.generation.jobs import upsert_generated
from app.jobs.models import Job
from app.pipeline.rouge import NearDuplicateIndex
from app.pipeline.self_instruct import GenRecord
from app.records.models import Record
from app.records.schemas import RecordFilter
from app.review import insights
from app.review.service import nn_finding, review_items
from app.snapshots.service import create_snapshot
from tests.conftest import serve_from
from tests.factories import PASSWORD, make_dataset, make_project, make_user, token_for
from tests.review.inline_dedup import (
    DOG,
    GRAVITY,
    NIGHT,
    SEA,
    TODAY,
    InlineJob,
    deduped_records,
    run_dedup,
)

DECILES = [f"{i / 10:.1f}" for i in range(10)]


@pytest.fixture
def deduped(db: Any) -> dict[str, Any]:
    curator = make_user(db, "curator")
    ds = make_dataset(db, make_project(db, (curator, "curator")))
    return {"curator": curator, "ds": ds, "recs": deduped_records(db, ds)}


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"], indirect=True)
def test_stats_count_records_without_a_neighbour_at_the_cutoff_in_their_own_bucket_not_at_0(
    client: Any, db: Any, backend: str, deduped: dict[str, Any]
) -> None:
    resp = client.get(
        f"/api/v1/review/datasets/{deduped['ds'].id}/stats", headers=token_for(db, deduped["curator"])
    )
    assert resp.status_code == 200
    stats = resp.json()
    # sea, dog, night (0.632 found on the way, below the cutoff) and gravity: none ≥ 0.70; today (0.947) and
    # the exact duplicate (1.0) are real scores; the rejected record was never compared.
    assert list(stats["nn_rouge"].items()) == [("none ≥ 0.70", 4)] + [
        (d, 2 if d == "0.9" else 0) for d in DECILES
    ]
    assert stats["nn_rouge_none"] == {"label": "none ≥ 0.70", "records": 4, "cutoffs": [0.7]}
    assert stats["nn_rouge_not_compared"] == 1


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"], indirect=True)
def test_stats_name_no_single_cutoff_when_records_were_deduped_at_different_ones(
    db: Any, backend: str, deduped: dict[str, Any]
) -> None:
    recs = deduped["recs"]
    run_dedup(db, deduped["ds"], threshold=0.3, scope={"ids": [recs["dog"].id]})
    stats = insights.dataset_stats(db=db, user=deduped["curator"], dataset_id=deduped["ds"].id)
    assert stats["nn_rouge_none"] == {"label": "none ≥ cutoff", "records": 4, "cutoffs": [0.3, 0.7]}
    assert stats["nn_rouge"]["none ≥ cutoff"] == 4 and stats["nn_rouge"]["0.0"] == 0


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"], indirect=True)
def test_a_score_stored_without_dedup_details_still_counts_as_a_score_but_0_does_not(
    db: Any, backend: str
) -> None:
    curator = make_user(db, "curator")
    ds = make_dataset(db, make_project(db, (curator, "curator")))
    rows = [
        Record(dataset_id=ds.id, instruction="a", nn_score=0.31),
        Record(dataset_id=ds.id, instruction="b", nn_score=0.0),
        Record(dataset_id=ds.id, instruction="c", nn_score=0.2, meta={"dedup": {"threshold": "0.7"}}),
        Record(dataset_id=ds.id, instruction="d", nn_score=0.5, meta={"dedup": {"threshold": [0.7]}}),
        Record(dataset_id=ds.id, instruction="e", nn_score=0.6, meta={"dedup": {"threshold": True}}),
    ]
    db.add_all(rows)
    db.flush()
    stats = insights.dataset_stats(db=db, user=curator, dataset_id=ds.id)
    assert [stats["nn_rouge"][k] for k in ("0.0", "0.2", "0.3", "0.5", "0.6")] == [0, 1, 1, 1, 1]
    assert stats["nn_rouge_none"] == {"label": "none ≥ cutoff", "records": 1, "cutoffs": []}
    # The review page reads them the same way.
    assert [nn_finding(r) for r in rows] == [
        ("found", None),
        ("below_cutoff", None),
        ("found", None),
        ("found", None),
        ("found", None),
    ]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"], indirect=True)
def test_review_api_says_none_at_the_cutoff_where_it_had_0_and_agrees_with_the_listed_neighbours(
    client: Any, db: Any, backend: str, deduped: dict[str, Any]
) -> None:
    recs = deduped["recs"]
    items = client.get(
        f"/api/v1/review/datasets/{deduped['ds'].id}/queue?limit=10",
        headers=token_for(db, deduped["curator"]),
    ).json()["items"]
    by_id = {i["id"]: i for i in items}
    assert set(by_id) == {recs[k].id for k in ("sea", "dog", "night", "gravity")}
    for item in items:
        m = item["machine"]
        assert (m["nn_status"], m["nn_cutoff"]) == ("below_cutoff", 0.7)
        # What the dedup job compared this record with is listed as "nearest", and lies below the cutoff.
        assert all(n["score"] < 0.7 for n in item["neighbours"] if n["relation"] == "nearest")
    night = by_id[recs["night"].id]
    assert night["machine"]["nn_score"] == pytest.approx(0.6316, abs=1e-4)  # the stored figure, unchanged
    assert [(n["id"], n["relation"]) for n in night["neighbours"]] == [(recs["sea"].id, "nearest")]
    # Later records that took this one as their nearest are listed with their own relation.
    sea = by_id[recs["sea"].id]
    assert [(n["id"], n["relation"], n["score"]) for n in sea["neighbours"]] == [
        (recs["sea_upper"].id, "points_here", 1.0),
        (recs["today"].id, "points_here", 0.9474),
        (recs["night"].id, "points_here", 0.6316),
    ]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"], indirect=True)
def test_figures_stored_by_generation_are_read_at_the_generating_jobs_threshold(
    db: Any, backend: str
) -> None:
    curator = make_user(db, "curator")
    ds = make_dataset(db, make_project(db, (curator, "curator")))
    job = Job(project_id=ds.project_id, dataset_id=ds.id, kind="self_instruct", params={"threshold": 0.7})
    db.add(job)
    db.flush()
    # What Self-Instruct's filter hands over: the index's decision and figure for every instruction.
    index = NearDuplicateIndex(threshold=0.7)
    generated = []
    for i, text in enumerate((SEA, DOG, NIGHT, GRAVITY, TODAY)):
        d = index.check_and_add(f"t{i}", text)
        generated.append(
            GenRecord(
                key=f"t{i}",
                instruction=text,
                input="",
                output="An answer.",
                status="kept" if d.kept else "rejected",
                reason=None if d.kept else "rouge_dup",
                source="self_instruct",
                teacher_model="fake",
                round=1,
                metadata={"nearest": d.nearest, "rouge_l": round(d.score, 4)},
            )
        )
    upsert_generated(
        InlineJob(db, ds.id, {}, job_id=job.id), generated, dataset_id=ds.id, key_prefix=f"si{job.id}"
    )
    db.expire_all()
    stats = insights.dataset_stats(db=db, user=curator, dataset_id=ds.id)
    assert stats["nn_rouge_none"] == {"label": "none ≥ 0.70", "records": 4, "cutoffs": [0.7]}
    assert stats["nn_rouge"]["0.6"] == 0 and stats["nn_rouge"]["0.9"] == 1
    rows = sorted(db.query(Record).filter(Record.dataset_id == ds.id), key=lambda r: r.id)
    items = {i.instruction: i for i in review_items(db=db, rows=rows)}
    assert items[NIGHT].machine.nn_score == pytest.approx(0.6316)  # stored, a partial figure
    assert (items[NIGHT].machine.nn_status, items[NIGHT].machine.nn_cutoff) == ("below_cutoff", 0.7)
    assert (items[TODAY].machine.nn_status, items[TODAY].machine.nn_cutoff) == ("found", 0.7)
    assert items[TODAY].neighbours[0].relation == "nearest" and items[TODAY].neighbours[0].instruction == SEA


def test_review_items_give_a_found_score_with_its_neighbour_and_never_compared_without_a_cutoff(
    db: Any, deduped: dict[str, Any]
) -> None:
    recs = deduped["recs"]
    today, exact, outside = review_items(db=db, rows=[recs["today"], recs["sea_upper"], recs["outside"]])
    assert (today.machine.nn_status, today.machine.nn_cutoff) == ("found", 0.7)
    assert today.machine.nn_record_id == recs["sea"].id
    assert (today.neighbours[0].id, today.neighbours[0].relation) == (recs["sea"].id, "nearest")
    assert today.neighbours[0].score == round(today.machine.nn_score or 0.0, 4)
    assert (exact.machine.nn_status, exact.machine.nn_score, exact.machine.nn_record_id) == (
        "found",
        1.0,
        recs["sea"].id,
    )
    assert (outside.machine.nn_status, outside.machine.nn_cutoff, outside.machine.nn_score) == (
        "not_compared",
        None,
        None,
    )


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"], indirect=True)
def test_snapshot_stats_count_records_without_a_neighbour_at_the_cutoff_in_their_own_bucket(
    db: Any, backend: str, deduped: dict[str, Any]
) -> None:
    snap = create_snapshot(
        db=db,
        user=deduped["curator"],
        dataset_id=deduped["ds"].id,
        name="all",
        description="",
        flt=RecordFilter(),
    )
    stats = snap.stats
    # The dedup's figures: as in the dataset stats (the exact duplicate's 1.0 has its own bucket here).
    assert stats["nn_rouge_hist"] == {"none ≥ 0.70": 4, "0.9": 1, "1.0": 1}
    assert stats["nn_rouge_none"] == {"label": "none ≥ 0.70", "records": 4, "cutoffs": [0.7]}
    assert stats["nn_rouge_not_compared"] == 1
    # The exact histogram over the snapshot searches down to 0.3: gravity and the colour question have no
    # instruction that close (their partial figures are not binned as scores).
    assert stats["max_rouge_l_cutoff"] == 0.3
    assert stats["max_rouge_l_hist"] == {"1.0": 2, "0.9": 1, "0.6": 1, "0.3": 1, "none ≥ 0.30": 2}


def test_deciding_a_duplicate_group_changes_the_members_it_listed_not_records_below_the_cutoff(
    client: Any, db: Any, deduped: dict[str, Any]
) -> None:
    recs, h, ds = deduped["recs"], token_for(db, deduped["curator"]), deduped["ds"].id
    groups = client.get(f"/api/v1/review/datasets/{ds}/duplicate-groups", headers=h).json()
    assert [(g["anchor_id"], g["members"]) for g in groups] == [(recs["sea"].id, 2)]
    # night points at sea too, with the 0.632 met below the cutoff: it is no duplicate of sea.
    resp = client.post(
        f"/api/v1/review/datasets/{ds}/duplicate-groups/{recs['sea'].id}",
        json={"status": "rejected"},
        headers=h,
    )
    assert resp.json() == {"updated": 2}
    db.expire_all()
    assert [db.get(Record, recs[k].id).status for k in ("today", "sea_upper", "night")] == [
        "rejected",
        "rejected",
        "pending",
    ]


# ---------------------------------------------------------------- the review page in a browser


def log_in(client: Any, user: Any) -> None:
    import re

    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    resp = client.post(
        "/login",
        data={"username": user.username, "password": PASSWORD, "csrf_token": token.group(1), "next": "/ui"},
        follow_redirects=False,
    )
    assert resp.status_code == 303, resp.text


def panel(page: Any, key: str) -> str:
    return str(
        page.locator("[data-role=machine] dt", has_text=key)
        .locator("xpath=following-sibling::dd[1]")
        .inner_text()
    )


@pytest.mark.browser
def test_review_page_shows_none_at_the_cutoff_instead_of_0_000_beside_listed_neighbours(
    client: Any, db: Any, deduped: dict[str, Any], browser_page: Any
) -> None:
    recs, page = deduped["recs"], browser_page
    log_in(client, deduped["curator"])
    serve_from(client, page)
    ds = deduped["ds"].id

    page.goto(f"http://testserver/ui/datasets/{ds}/review?record={recs['sea'].id}")
    page.wait_for_selector("[data-role=neighbours] li")
    assert panel(page, "NN ROUGE-L") == "none ≥ 0.70 among records checked before it"
    assert "0.000" not in page.inner_text("aside.side")
    listed = page.locator("[data-role=neighbours] li").all_inner_texts()
    assert [line.split()[0] for line in listed] == ["1.00", "0.95", "0.63"]
    assert all("has this one as its nearest" in line for line in listed)

    page.goto(f"http://testserver/ui/datasets/{ds}/review?record={recs['night'].id}")
    page.wait_for_selector("[data-role=neighbours] li")
    assert panel(page, "NN ROUGE-L") == "none ≥ 0.70 among records checked before it"
    assert (
        page.locator("[data-role=neighbours] li")
        .all_inner_texts()[0]
        .startswith(f"0.63 #{recs['sea'].id} · pending · closest record dedup scored (below the cutoff)")
    )

    page.goto(f"http://testserver/ui/datasets/{ds}/review?record={recs['today'].id}")
    page.wait_for_selector("[data-role=neighbours] li")
    assert panel(page, "NN ROUGE-L") == f"0.95 · record #{recs['sea'].id}"
    assert (
        page.locator("[data-role=neighbours] li")
        .all_inner_texts()[0]
        .startswith(f"0.95 #{recs['sea'].id} · pending · dedup's nearest")
    )

    page.goto(f"http://testserver/ui/datasets/{ds}/review?record={recs['outside'].id}")
    page.wait_for_selector("[data-role=neighbours] li")
    assert panel(page, "NN ROUGE-L") == "not compared (no dedup run)"
