from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class LoginRequest(BaseModel):
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=1000)


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    role: str
    is_active: bool
    created_at: datetime


class UserBrief(BaseModel):
    """What a curator needs to add someone to a project: who, not their role or state."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str


class LoginResponse(BaseModel):
    user: UserRead
    csrf_token: str = Field(description="Send as X-CSRF-Token on writes made with the session cookie.")


class UserCreate(BaseModel):
    username: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")
    password: str = Field(min_length=8, max_length=1000)
    role: str = "annotator"


class UserUpdate(BaseModel):
    role: str | None = None
    is_active: bool | None = None
    password: str | None = Field(None, min_length=8, max_length=1000)


class PasswordChange(BaseModel):
    current_password: str = Field(min_length=1, max_length=1000)
    new_password: str = Field(min_length=8, max_length=1000)


class TokenCreate(BaseModel):
    name: str = Field("api", min_length=1, max_length=100)
    username: str | None = Field(None, description="With password: get a token without a session.")
    password: str | None = None


class TokenRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool


class TokenCreated(TokenRead):
    token: str = Field(description="The token itself: shown once, store it now.")
