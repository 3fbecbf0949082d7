"""Your account: change your own password (the current one required)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

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


@router.post("/ui/account/password")
def change_password(
    request: Request, form: CheckedForm, user: PageUser, db: SessionDep, settings: SettingsDep
) -> Response:
    """A new password ends every session and API token of the account; this browser gets a new session."""
    new = str(form.get("new_password", ""))
    try:
        if new != str(form.get("confirm_password", "")):
            raise Invalid("the two new passwords differ", field="confirm_password")
        ended = auth_service.change_own_password(
            db=db,
            user=user,
            current_password=str(form.get("current_password", "")),
            new_password=new,
            client=client_address(request),
        )
    except (Invalid, TooManyAttempts) as exc:
        return refused_page(request, "account.html", user, exc)
    others = max(ended["sessions_ended"] - 1, 0)  # this browser's session ended too, and starts again
    response = redirect(
        "/ui/account",
        f"password changed: {others} other sessions and {ended['tokens_revoked']} API tokens ended",
    )
    set_session_cookie(response, settings, user)
    return response
