"""The review page in a real browser (the in-process app on the test's session): where you are in the queue,
the shortcut help, the saved indicator, the undo notice, a record's history of decisions; the login form
after a refusal and the favicon."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from app.records.models import Record
from tests.conftest import serve_from
from tests.factories import PASSWORD, make_dataset, make_project, make_records, make_user
from tests.ui.test_pages import login

DOCS = Path(__file__).resolve().parents[2] / "docs" / "ui.md"
BASE = "http://testserver"
SHOTS = os.environ.get("IF_UI_SCREENSHOTS")  # a folder: refresh the docs' screenshots of these pages


def shot(page: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / name))


@pytest.fixture
def world(db: Session) -> dict[str, Any]:
    annotator = make_user(db, "annotator")
    ds = make_dataset(db, make_project(db, (annotator, "annotator")))
    pending = make_records(db, ds, 4)
    decided = make_records(db, ds, 1, status="accepted", human_decided=True)[0]
    return {"annotator": annotator, "ds": ds, "pending": pending, "decided": decided}


def open_review(client: Any, page: Any, world: dict[str, Any], record: int | None = None) -> Any:
    login(client, world["annotator"])
    serve_from(client, page)
    query = f"?record={record}" if record is not None else ""
    page.goto(f"{BASE}/ui/datasets/{world['ds'].id}/review{query}")
    page.wait_for_selector("[data-role=rid]:has-text('#')")
    return page


def wait_text(page: Any, role: str, text: str) -> None:
    page.wait_for_selector(f"[data-role={role}]:has-text({text!r})")


def documented_keys() -> list[str]:
    """The keys column of docs/ui.md's shortcut table, in its order."""
    section = DOCS.read_text(encoding="utf-8").split("| Key | Action |", 1)[1].split("\n\n", 1)[0]
    return [row.split("|")[1].strip().strip("`") for row in section.splitlines()[2:]]


def test_question_mark_opens_the_shortcut_help_listing_every_handled_key_and_esc_closes_it(
    client: Any, db: Session, world: dict[str, Any], browser_page: Any
) -> None:
    page = open_review(client, browser_page, world)
    overlay = page.locator("[data-role=help]")
    assert overlay.is_hidden()
    page.keyboard.press("?")
    overlay.wait_for(state="visible")
    listed = page.locator("[data-role=help-keys] th").all_inner_texts()
    assert listed == documented_keys()  # the docs' table and the page's own table say the same
    assert {"a", "r", "e", "1–5", "t", "s", "j", "k", "u", "f", "h", "?", "Esc", "Ctrl+Enter"} <= set(listed)
    assert "accept" in page.inner_text("[data-role=help-keys]")
    shot(page, "review_help.png")
    # The help is modal: a decision key does nothing while it is open.
    page.keyboard.press("a")
    page.keyboard.press("Escape")
    overlay.wait_for(state="hidden")
    db.expire_all()
    assert db.get(Record, world["pending"][0].id).status == "pending"  # type: ignore[union-attr]
    assert page.inner_text("[data-role=position]") == "1 of 4"
    # The footer comes from the same table; ? toggles, and the header's button opens it too.
    assert "? help" in page.inner_text("[data-role=shortcuts]")
    page.click("[data-role=help-open]")
    overlay.wait_for(state="visible")
    page.keyboard.press("?")
    overlay.wait_for(state="hidden")


def test_position_reads_n_of_N_in_the_queue_and_follows_decisions_and_j_k(
    client: Any, db: Session, world: dict[str, Any], browser_page: Any
) -> None:
    page = open_review(client, browser_page, world)
    pending = world["pending"]
    assert page.inner_text("[data-role=position]") == "1 of 4"
    page.keyboard.press("a")
    wait_text(page, "position", "2 of 4")
    wait_text(page, "saved", "Saved")
    page.keyboard.press("j")
    wait_text(page, "position", "3 of 4")
    page.keyboard.press("k")
    wait_text(page, "position", "2 of 4")
    assert page.inner_text("[data-role=rid]").startswith(f"#{pending[1].id} ")

    # Opened at a record in the middle of the queue, or at one already decided (outside it).
    page.goto(f"{BASE}/ui/datasets/{world['ds'].id}/review?record={pending[2].id}")
    page.wait_for_selector("[data-role=rid]:has-text('#')")
    assert page.inner_text("[data-role=position]") == "2 of 3"  # the accepted one has left the queue
    page.goto(f"{BASE}/ui/datasets/{world['ds'].id}/review?record={world['decided'].id}")
    page.wait_for_selector("[data-role=rid]:has-text('#')")
    assert page.inner_text("[data-role=position]") == "4 of 4"


def test_saved_indicator_confirms_each_stored_edit_and_decision_and_says_when_one_is_not(
    client: Any, db: Session, world: dict[str, Any], browser_page: Any
) -> None:
    page = open_review(client, browser_page, world)
    first, second = world["pending"][:2]
    assert page.inner_text("[data-role=saved]") == ""
    page.keyboard.press("e")
    page.fill("textarea[data-field=output]", "A better answer.")
    page.keyboard.press("Control+Enter")
    wait_text(page, "saved", f"Saved: edited #{first.id} (v2)")
    page.keyboard.press("3")
    wait_text(page, "saved", f"Saved: rated #{first.id}")
    page.keyboard.press("a")
    wait_text(page, "saved", f"Saved: accepted #{first.id}")
    db.expire_all()
    stored = db.get(Record, first.id)
    assert stored is not None and (stored.output, stored.rating, stored.status) == (
        "A better answer.",
        3,
        "accepted",
    )
    # Someone else changes the next record: the rating is refused, and the indicator says so.
    theirs = db.get(Record, second.id)
    assert theirs is not None
    theirs.version += 1
    db.flush()
    page.keyboard.press("5")
    wait_text(page, "saved", f"Not saved: rate on #{second.id}")
    assert page.locator("[data-role=banner]").is_visible()
    assert "Saved:" not in page.inner_text("[data-role=saved]")


def test_undo_says_so_in_a_neutral_notice_not_the_error_banner(
    client: Any, db: Session, world: dict[str, Any], browser_page: Any
) -> None:
    page = open_review(client, browser_page, world)
    first = world["pending"][0]
    page.keyboard.press("a")
    wait_text(page, "saved", "Saved: accepted")
    page.keyboard.press("u")
    wait_text(page, "notice", f"Undid accept on record #{first.id}.")
    assert page.locator("[data-role=banner]").is_hidden()
    notice = page.locator("[data-role=notice]")
    assert notice.get_attribute("role") == "status"
    colour = "el => getComputedStyle(el).backgroundColor"
    assert notice.evaluate(colour) != page.locator("[data-role=banner]").evaluate(colour)
    assert "Saved: undid accept" in page.inner_text("[data-role=saved]")
    db.expire_all()
    assert db.get(Record, first.id).status == "pending"  # type: ignore[union-attr]
    page.keyboard.press("a")  # the next decision clears the notice
    notice.wait_for(state="hidden")


def test_history_shows_ratings_tags_decisions_and_undo_with_who_beside_the_edits(
    client: Any, db: Session, world: dict[str, Any], browser_page: Any
) -> None:
    page = open_review(client, browser_page, world)
    rid, who = world["pending"][0].id, world["annotator"].username
    page.keyboard.press("4")
    wait_text(page, "saved", "Saved: rated")
    page.keyboard.press("h")
    wait_text(page, "history", "rating — → 4")
    page.keyboard.press("t")
    page.keyboard.type("tone, facts")
    page.keyboard.press("Enter")
    wait_text(page, "history", "tags — → facts, tone")  # the open panel follows the decisions
    page.keyboard.press("e")
    page.fill("textarea[data-field=output]", "Fixed output.")
    page.keyboard.press("Control+Enter")
    wait_text(page, "saved", "Saved: edited")
    page.keyboard.press("r")
    page.keyboard.type("incorrect")
    page.keyboard.press("Enter")
    wait_text(page, "saved", "Saved: rejected")
    page.keyboard.press("u")
    wait_text(page, "notice", "Undid reject")

    page.goto(f"{BASE}/ui/records/{rid}/history")
    entries = page.locator("section.history-entry")
    actions = entries.locator(".action").all_inner_texts()
    assert actions == ["undo", "reject", "edit", "tag", "rate"]
    texts = entries.all_inner_texts()
    assert all(f"by {who}" in t for t in texts)
    assert "undid reject" in texts[0]
    assert "status pending → rejected" in texts[1] and "reason: incorrect" in texts[1]
    assert "undone" in texts[1] and "undone" in (entries.nth(1).get_attribute("class") or "")
    assert "edited output" in texts[2] and page.locator("ins:has-text('Fixed')").count() == 1
    assert "tags — → facts, tone" in texts[3]
    assert "rating — → 4" in texts[4]
    assert all(re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", t) for t in texts)  # when
    shot(page, "history.png")


def test_a_failed_login_keeps_the_username_and_never_the_password(
    client: Any, db: Session, browser_page: Any
) -> None:
    user = make_user(db, "annotator")
    serve_from(client, browser_page)
    page = browser_page
    page.goto(f"{BASE}/login")
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", "not-the-password-42")
    with page.expect_response(f"{BASE}/login") as refused:
        page.keyboard.press("Enter")
    assert refused.value.status == 401
    page.wait_for_selector("p.error")
    assert page.input_value("input[name=username]") == user.username
    assert page.input_value("input[name=password]") == ""
    assert "not-the-password-42" not in page.content()
    assert page.evaluate("document.activeElement.name") == "password"
    page.fill("input[name=password]", PASSWORD)
    page.keyboard.press("Enter")
    # serve_from follows the redirect inside the app, so the browser stays at /login: look for the header.
    page.wait_for_selector(f"header .who:has-text({user.username!r})")


def test_favicon_is_served_at_favicon_ico_and_linked_from_every_page(client: Any) -> None:
    resp = client.get("/favicon.ico")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("image/svg+xml")
    assert resp.text.startswith("<svg")
    login_page = client.get("/login")
    href = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', login_page.text)
    assert href is not None
    linked = client.get(href.group(1))
    assert linked.status_code == 200 and linked.content == resp.content


def test_a_refused_username_comes_back_escaped(client: Any) -> None:
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    typed = '"><img src=x onerror="window.__xss=1">'
    resp = client.post(
        "/login",
        data={"username": typed, "password": "whatever", "csrf_token": token.group(1), "next": "/ui"},
    )
    assert resp.status_code == 401
    assert typed not in resp.text
    assert 'value="&#34;&gt;&lt;img src=x onerror=&#34;window.__xss=1&#34;&gt;"' in resp.text
