"""Server-rendered pages without a browser: authorisation, CSRF on forms, escaping, forms from job schemas."""

from __future__ import annotations

import re
from itertools import pairwise

import pytest

from app.records.models import Record
from app.ui.charts import COL_W, LABEL_CHAR_W, bar_chart
from tests.factories import PASSWORD, make_dataset, make_project, make_records, make_user
from tests.review.inline_dedup import deduped_records

XSS_OUTPUT = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'


@pytest.fixture
def world(db):
    admin = make_user(db, "admin")
    curator, annotator, outsider = (
        make_user(db, "curator"),
        make_user(db, "annotator"),
        make_user(db, "curator"),
    )
    project = make_project(db, (curator, "curator"), (annotator, "annotator"))
    other = make_project(db, (outsider, "curator"))
    ds = make_dataset(db, project)
    ds.guidelines = "Accept <b>only</b> correct answers."
    other_ds = make_dataset(db, other)
    recs = make_records(db, ds, 6)
    recs[0].output = XSS_OUTPUT
    recs[1].nn_score, recs[2].nn_score = 0.91, 0.85
    db.flush()
    return {
        "admin": admin,
        "curator": curator,
        "annotator": annotator,
        "project": project,
        "ds": ds,
        "other_ds": other_ds,
        "recs": recs,
    }


def token_in(html: str, pattern: str) -> str:
    match = re.search(pattern, html)
    assert match is not None, pattern
    return match.group(1)


def login(client, user) -> str:
    """Log in through the login form; returns the page CSRF token."""
    page = client.get("/login")
    token = token_in(page.text, r'name="csrf_token" value="([^"]+)"')
    resp = client.post(
        "/login",
        data={"username": user.username, "password": PASSWORD, "csrf_token": token, "next": "/ui"},
        follow_redirects=False,
    )
    assert resp.status_code == 303, resp.text
    dash = client.get("/ui")
    return token_in(dash.text, r'name="csrf-token" content="([^"]+)"')


def test_logged_out_pages_redirect_to_login_and_root_follows_session(client, world):
    resp = client.get(f"/ui/datasets/{world['ds'].id}/review", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"].startswith("/login?next=/ui/datasets/")
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    login(client, world["annotator"])
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui"


def test_login_form_needs_its_csrf_token_and_rejects_bad_passwords(client, world):
    client.get("/login")
    user = world["annotator"]
    forged = client.post("/login", data={"username": user.username, "password": PASSWORD, "csrf_token": "x"})
    assert forged.status_code == 403 and "if_session" not in client.cookies
    token = token_in(client.get("/login").text, r'name="csrf_token" value="([^"]+)"')
    bad = client.post(
        "/login", data={"username": user.username, "password": "wrong-password", "csrf_token": token}
    )
    assert bad.status_code == 401 and "invalid username or password" in bad.text


def test_login_redirects_only_to_same_site_paths(client, world):
    token = token_in(client.get("/login").text, r'name="csrf_token" value="([^"]+)"')
    resp = client.post(
        "/login",
        data={
            "username": world["curator"].username,
            "password": PASSWORD,
            "csrf_token": token,
            "next": "//evil.example/phish",
        },
        follow_redirects=False,
    )
    assert resp.headers["location"] == "/ui"


def test_annotator_is_refused_admin_pages_and_sees_only_own_projects(client, world):
    login(client, world["annotator"])
    ds = world["ds"].id
    assert client.get(f"/ui/datasets/{ds}").status_code == 403
    assert client.get(f"/ui/datasets/{ds}/records").status_code == 403
    assert client.get(f"/ui/datasets/{ds}/jobs/new/dedup").status_code == 403
    assert client.get(f"/ui/projects/{world['project'].id}").status_code == 403
    assert client.get("/ui/users").status_code == 403
    assert client.get(f"/ui/datasets/{world['other_ds'].id}/review").status_code == 404
    dash = client.get("/ui")
    assert world["ds"].name in dash.text and world["other_ds"].name not in dash.text
    assert client.get(f"/ui/datasets/{ds}/review").status_code == 200


def test_record_text_is_escaped_everywhere_it_is_rendered(client, world):
    login(client, world["curator"])
    ds = world["ds"].id
    review = client.get(f"/ui/datasets/{ds}/review?record={world['recs'][0].id}")
    assert "<script>window.__xss" not in review.text and "<img src=x" not in review.text
    assert "\\u003cscript\\u003e" in review.text  # inside the JSON data block, inert
    assert "Accept &lt;b&gt;only&lt;/b&gt;" in review.text
    listing = client.get(f"/ui/datasets/{ds}/records")
    assert (
        "&lt;script&gt;window.__xss=1&lt;/script&gt;" in listing.text and "<script>window" not in listing.text
    )
    assert "script-src 'self'" in listing.headers["content-security-policy"]


def test_forms_without_the_csrf_token_are_refused(client, db, world):
    token = login(client, world["curator"])
    ds = world["ds"].id
    form = {"target_status": "rejected", "min_nn_score": "0.8"}
    assert client.post(f"/ui/datasets/{ds}/bulk", data=form).status_code == 403
    assert client.post(f"/ui/datasets/{ds}/bulk", data={**form, "csrf_token": "forged"}).status_code == 403
    db.expire_all()
    assert all(r.status == "pending" for r in db.query(Record).filter(Record.dataset_id == ds))
    resp = client.post(f"/ui/datasets/{ds}/bulk", data={**form, "csrf_token": token}, follow_redirects=False)
    assert resp.status_code == 303


def test_bulk_form_applies_to_the_whole_filter(client, db, world):
    token = login(client, world["curator"])
    ds = world["ds"].id
    page = client.post(
        f"/ui/datasets/{ds}/bulk",
        data={
            "target_status": "rejected",
            "min_nn_score": "0.8",
            "set_reason": "near_dup",
            "csrf_token": token,
        },
    )
    db.expire_all()
    rejected = {r.id for r in db.query(Record).filter(Record.dataset_id == ds, Record.status == "rejected")}
    assert rejected == {world["recs"][1].id, world["recs"][2].id}
    assert {r.reason for r in db.query(Record).filter(Record.id.in_(rejected))} == {"near_dup"}
    assert "2 records set to rejected" in page.text


def test_job_form_is_generated_from_the_kind_schema_with_defaults(client, db, world):
    token = login(client, world["curator"])
    ds = world["ds"].id
    page = client.get(f"/ui/datasets/{ds}/jobs/new/dedup")
    assert page.status_code == 200
    assert re.search(r'name="threshold" value="0.7"', page.text)
    assert "&#34;status&#34;" in page.text and "pending" in page.text  # the scope default, as JSON
    bad = client.post(f"/ui/datasets/{ds}/jobs/new/dedup", data={"csrf_token": token, "threshold": "7"})
    assert bad.status_code == 422 and "threshold" in bad.text
    ok = client.post(
        f"/ui/datasets/{ds}/jobs/new/dedup",
        data={
            "csrf_token": token,
            "threshold": "0.5",
            "field": "instruction",
            "exact": "on",
            "scope": '{"status": ["pending"]}',
        },
        follow_redirects=False,
    )
    assert ok.status_code == 303
    from app.jobs.models import Job

    job = db.query(Job).filter(Job.dataset_id == ds).one()
    assert job.params["threshold"] == 0.5 and job.params["exact"] is True and job.params["stem"] is False
    assert client.get(ok.headers["location"]).status_code == 200


def test_dataset_page_draws_stats_as_svg(client, world):
    login(client, world["curator"])
    page = client.get(f"/ui/datasets/{world['ds'].id}")
    assert page.status_code == 200
    assert page.text.count("<svg") >= 5
    assert "Nearest-neighbour ROUGE-L" in page.text and "pending: 6" in page.text


def test_dataset_page_draws_records_without_a_neighbour_at_the_cutoff_as_their_own_bar(client, db, world):
    ds = make_dataset(db, world["project"])
    deduped_records(db, ds)  # 4 with none ≥ 0.70, 2 real scores in 0.9, 1 never compared
    login(client, world["curator"])
    # the 0.9 pair was filtered as duplicates
    page = client.get(f"/ui/datasets/{ds.id}?include_filtered=true")
    assert page.status_code == 200
    nn = page.text.split("Nearest-neighbour ROUGE-L</figcaption>", 1)[1].split("</figure>", 1)[0]
    bars = re.findall(r"<title>([^<]*): (\d+)</title>", nn)
    assert bars[:2] == [("none ≥ 0.70", "4"), ("0.0", "0")] and bars[-1] == ("0.9", "2")
    assert "1 record never compared" in page.text and "no record at or above the dedup cutoff" in page.text


def test_chart_columns_are_as_wide_as_their_labels_so_labels_never_overlap():
    chart = bar_chart("NN", {"none ≥ 0.70": 4, "0.0": 0, "0.1": 3}, horizontal=False)

    def extent(bar):
        centre, half = bar.x + bar.w / 2, LABEL_CHAR_W * len(bar.label) / 2
        return centre - half, centre + half

    spans = [extent(b) for b in chart.bars]
    assert all(left[1] <= right[0] for left, right in pairwise(spans))
    assert chart.bars[2].x - chart.bars[1].x == COL_W and chart.width >= spans[-1][1]


def test_curator_creates_project_dataset_and_member_through_forms(client, db, world):
    token = login(client, world["curator"])
    resp = client.post("/ui/projects", data={"name": "fresh", "csrf_token": token}, follow_redirects=False)
    pid = int(resp.headers["location"].rsplit("/", 1)[1])
    client.post(
        f"/ui/projects/{pid}/members",
        data={"user_id": world["annotator"].id, "role": "annotator", "csrf_token": token},
    )
    resp = client.post(
        f"/ui/projects/{pid}/datasets", data={"name": "d1", "csrf_token": token}, follow_redirects=False
    )
    assert resp.status_code == 303
    page = client.get(f"/ui/projects/{pid}")
    assert world["annotator"].username in page.text and "d1" in page.text


def test_training_and_jobs_pages_render(client, world):
    login(client, world["curator"])
    assert client.get("/ui/training").status_code == 200
    assert client.get("/ui/training/12345").status_code == 404  # no such run (issue 16 §3)
    assert client.get("/ui/jobs").status_code == 200


def test_logout_needs_csrf_and_ends_the_session(client, world):
    token = login(client, world["annotator"])
    assert client.post("/logout", data={}).status_code == 403
    client.post("/logout", data={"csrf_token": token})
    assert client.get("/ui", follow_redirects=False).status_code == 303
