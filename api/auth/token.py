"""`POST /token`: OAuth2's client-credentials grant (RFC 6749 §4.4), answering as §5.1 and §5.2 say.

The client authenticates with `client_id` and `client_secret` in the form, or with HTTP Basic (§2.3.1).
Errors are `{"error", "error_description"}` with 400, or 401 for a client that fails to authenticate;
never a 422, since the form's fields are checked here, by the grant's rules.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Annotated
from urllib.parse import unquote

from fastapi import APIRouter, Form, Header, Request
from fastapi.responses import JSONResponse
from fastapi.security.utils import get_authorization_scheme_param

from api.auth import security
from api.auth.deps import REALM, TOKEN_URL, Authenticator
from api.auth.schemas import OAuthErrorPublic, TokenPublic

logger = logging.getLogger(__name__)

router = APIRouter(tags=["auth"])

#: RFC 6749 §5.1: tokens and their errors are never cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

FormField = Annotated[str | None, Form()]


class OAuthError(Exception):
    """An error of the token endpoint; `status` 400, or 401 for `invalid_client`."""

    def __init__(self, error: str, description: str, *, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.status = status

    def response(self) -> JSONResponse:
        """The §5.2 body, with a Basic challenge on 401 (§5.2 asks for one when Basic was used)."""
        headers = dict(NO_STORE)
        if self.status == 401:
            headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
        return JSONResponse(
            {"error": self.error, "error_description": str(self)}, status_code=self.status, headers=headers
        )


@router.post(
    TOKEN_URL,
    response_model=TokenPublic,
    responses={
        400: {
            "model": OAuthErrorPublic,
            "description": "invalid_request, unsupported_grant_type, invalid_scope",
        },
        401: {"model": OAuthErrorPublic, "description": "invalid_client: unknown, revoked or wrong secret"},
    },
)
def issue_access_token(
    request: Request,
    grant_type: Annotated[str | None, Form(description="Must be `client_credentials`")] = None,
    client_id: Annotated[str | None, Form(description="From `retail-api clients create`")] = None,
    client_secret: Annotated[str | None, Form(description="From `retail-api clients create`")] = None,
    scope: Annotated[
        str | None,
        Form(description="Space-separated scopes to narrow the token to; default: all the client's"),
    ] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> TokenPublic | JSONResponse:
    """An access token for an OAuth2 client (form-encoded, `grant_type=client_credentials`)."""
    authenticator: Authenticator = request.app.state.authenticator
    try:
        if not grant_type:
            raise OAuthError("invalid_request", "grant_type is required")
        if grant_type != "client_credentials":
            raise OAuthError("unsupported_grant_type", "only grant_type=client_credentials is supported")
        if authenticator.tokens is None:
            raise OAuthError(
                "unsupported_grant_type", "this service issues no tokens (TOKEN_SECRET is not set)"
            )
        client_id, client_secret = _client_credentials(client_id, client_secret, authorization)
        # Only a well-formed id is looked up: nothing a client sends reaches the database unchecked.
        client = authenticator.find_client(client_id) if security.is_client_id(client_id) else None
        # Argon2 is checked even for an unknown id: the answer's time does not tell ids apart.
        matched = security.client_secret_matches(client_secret, client.secret_hash if client else None)
        if client is None or not matched:
            raise OAuthError("invalid_client", "unknown client or wrong secret", status=401)
        scopes = _scopes(scope, held=tuple(client.scopes.split()))
    except OAuthError as error:
        logger.info("token refused: %s (%s)", error.error, error)
        return error.response()
    token = security.issue_token(
        authenticator.tokens, client_id=client.client_id, scopes=scopes, generation=client.generation
    )
    logger.info("token issued to client %s for %s", client.name, " ".join(scopes))
    body = TokenPublic(
        access_token=token, expires_in=authenticator.tokens.expire_seconds, scope=" ".join(scopes)
    )
    return JSONResponse(body.model_dump(), headers=NO_STORE)


def _client_credentials(
    client_id: str | None, client_secret: str | None, authorization: str | None
) -> tuple[str, str]:
    """The client's id and secret, from HTTP Basic or from the form, not both (§2.3)."""
    scheme, encoded = get_authorization_scheme_param(authorization)
    if scheme.lower() == "basic":
        if client_id is not None or client_secret is not None:
            raise OAuthError("invalid_request", "authenticate with HTTP Basic or with the form, not both")
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError("invalid_client", "malformed HTTP Basic credentials", status=401) from None
        basic_id, separator, basic_secret = decoded.partition(":")
        if not separator:
            raise OAuthError("invalid_client", "malformed HTTP Basic credentials", status=401)
        # §2.3.1: id and secret are form-urlencoded before Basic encodes them.
        return unquote(basic_id.replace("+", " ")), unquote(basic_secret.replace("+", " "))
    if not client_id or not client_secret:
        raise OAuthError("invalid_client", "give client_id and client_secret (or HTTP Basic)", status=401)
    return client_id, client_secret


def _scopes(requested: str | None, *, held: tuple[str, ...]) -> tuple[str, ...]:
    """The token's scopes: those asked for, if the client holds them; all the client's otherwise."""
    if requested is None or not requested.strip():
        return held
    try:
        asked = security.parse_scopes(requested)
    except security.ScopeError as error:
        raise OAuthError("invalid_scope", str(error)) from None
    beyond = sorted(set(asked) - security.granted(held))
    if beyond:
        raise OAuthError("invalid_scope", f"the client does not hold {', '.join(beyond)}")
    return asked
