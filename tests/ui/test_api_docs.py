"""The API documentation works without internet: /docs and /redoc load their scripts from this server."""

from __future__ import annotations

from typing import Any

from tests.conftest import serve_from

ASSETS = "/static-offline-docs/"


def test_docs_pages_reference_only_assets_this_server_serves(client: Any):
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert ASSETS in html and "cdn.jsdelivr" not in html and "unpkg" not in html
    assert client.get(ASSETS + "swagger-ui-bundle.js").status_code == 200
    spec = client.get("/openapi.json")  # where tools look first
    assert spec.status_code == 200 and spec.json()["info"]["title"] == "InstructForge"


def test_swagger_ui_renders_the_api_offline_in_a_browser(client: Any, browser_page: Any):
    outside: list[str] = []
    browser_page.on(
        "request", lambda r: None if r.url.startswith("http://testserver/") else outside.append(r.url)
    )
    serve_from(client, browser_page)
    browser_page.goto("http://testserver/docs")
    browser_page.wait_for_selector(".opblock-tag", timeout=30_000)  # operations grouped by tag: it rendered
    assert browser_page.locator(".opblock").count() > 40
    assert outside == []
