"""Bodies of the authentication answers: the token, and the errors of RFC 6749 §5.2 and of the data routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class TokenPublic(BaseModel):
    """An access token of the client-credentials grant (RFC 6749 §5.1)."""

    access_token: str = Field(description="A signed JWT; send it as `Authorization: Bearer <token>`")
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the token expires", examples=[900])
    scope: str = Field(description="The token's scopes, space-separated", examples=["read"])


class OAuthErrorPublic(BaseModel):
    """An error of the token endpoint (RFC 6749 §5.2)."""

    error: Literal["invalid_request", "invalid_client", "unsupported_grant_type", "invalid_scope"]
    error_description: str


class AuthErrorPublic(BaseModel):
    """Why a request's credentials were refused (401) or do not suffice (403)."""

    detail: str
