"""Your account: change your own password (the current one required)."""

from __future__ import annotations

from typing import TypedDict

from fastapi import APIRouter, Request, Response
from starlette.datastructures import FormData

from app.auth import service as auth_service
from app.auth.router import set_session_cookie
from app.auth.throttle import TooManyAttempts
from app.deps import SessionDep, SettingsDep, client_address
from app.errors import Invalid
from app.ui.web import CheckedForm, HtmlRoute, PageUser, redirect, refused_page, render

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)


@router.get("/ui/account")
def account_page(request: Request, user: PageUser) -> Response:
    return render(request, "account.html", user, error=None)


class _Passwords(TypedDict):
    current_password: str
    new_password: str
    confirm_password: str


def _passwords(form: FormData) -> _Passwords:
    return _Passwords(
        current_password=str(form.get("current_password", "")),
        new_password=str(form.get("new_password", "")),
        confirm_password=str(form.get("confirm_password", "")),
    )


def _changed(ended: dict[str, int]) -> str:
    others = max(ended["sessions_ended"] - 1, 0)  # this browser's session ended too, and starts again
    return f"password changed: {others} other sessions and {ended['tokens_revoked']} API tokens ended"


@router.post("/ui/account/password")
def change_password(
    request: Request, form: CheckedForm, user: PageUser, db: SessionDep, settings: SettingsDep
) -> Response:
    """A new password ends every session and API token of the account; this browser gets a new session."""
    try:
        ended = auth_service.change_own_password(
            db=db, user=user, client=client_address(request), **_passwords(form)
        )
    except (Invalid, TooManyAttempts) as exc:
        return refused_page(request, "account.html", user, exc)
    response = redirect("/ui/account", _changed(ended))
    set_session_cookie(response, settings, db, user)
    return response
