"""Signed stream tokens: who may watch which import.

A token is ``<payload>.<signature>``, both base64url without padding: the payload is
the JSON ``{"imp": import_id, "exp": unix seconds}`` (and ``"sub"``, who it was
minted for, when given) and the signature its HMAC-SHA256 under the relay's secret
(``DRAMATIQ_SHARED_SECRET``). A token for the import ``"*"`` is an admin token: it may
watch every import and use the operations views; its subject is who the audit names.
Tokens are checked in constant time and carry nothing secret; they only expire.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from aiohttp import web

from .._checks import check_id, check_int
from ..errors import AuthError, ConfigError
from ..metrics import RELAY_REFUSALS

__all__ = ["ADMIN", "Claims", "authorize_request", "sign", "verify"]

#: The import id of an admin token: every import.
ADMIN = "*"
#: Longest token accepted, in characters.
MAX_TOKEN = 1_024


@dataclass(frozen=True)
class Claims:
    """What a valid token grants: one import (or all, for ``ADMIN``) until ``expires``."""

    import_id: str
    expires: int
    subject: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.import_id == ADMIN

    def allows(self, import_id: str) -> bool:
        """Whether these claims may watch ``import_id``."""
        return self.is_admin or import_id == self.import_id


def _key(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if len(key) < 16:
        raise ConfigError("the stream token secret must be at least 16 bytes", field="secret")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(
    import_id: str,
    secret: str | bytes,
    ttl: int = 3_600,
    *,
    subject: str | None = None,
    now: float | None = None,
) -> str:
    """A token to watch ``import_id`` (``"*"`` for all) for ``ttl`` seconds, minted for
    ``subject`` (a person or a service, 1 to 128 characters) when given.

    Raises:
      ValidationError: When ``import_id`` or ``ttl`` is invalid.
      ConfigError: When the secret is shorter than 16 bytes.
    """
    if import_id != ADMIN:
        check_id("import_id", import_id)
    check_int("ttl", ttl, minimum=1)
    expires = int((time.time() if now is None else now) + ttl)
    claims: dict[str, object] = {"imp": import_id, "exp": expires}
    if subject is not None:
        check_id("subject", subject)
        claims["sub"] = subject
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(_key(secret), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(signature)}"


def verify(
    token: object, secret: str | bytes, *, import_id: str | None = None, now: float | None = None
) -> Claims:
    """Check a token, and that it allows ``import_id`` when one is given.

    Returns:
      Its claims.

    Raises:
      AuthError: ``unauthorized`` when it is missing, malformed or not signed with
        ``secret``; ``expired``; ``forbidden`` when it is for another import.
    """
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN or token.count(".") != 1:
        raise AuthError("unauthorized", "a signed token is required")
    payload, signature = token.split(".")
    expected = hmac.new(_key(secret), payload.encode(), hashlib.sha256).digest()
    try:
        valid = hmac.compare_digest(_unb64(signature), expected)
        claims = json.loads(_unb64(payload)) if valid else None
    except (ValueError, UnicodeDecodeError):
        valid, claims = False, None
    if (
        not valid
        or not isinstance(claims, dict)
        or not isinstance(claims.get("imp"), str)
        or not isinstance(claims.get("exp"), int)
        or not isinstance(claims.get("sub", ""), str)
    ):
        raise AuthError("unauthorized", "the token is not valid")
    if claims["exp"] <= (time.time() if now is None else now):
        raise AuthError("expired", "the token has expired")
    granted = Claims(claims["imp"], claims["exp"], claims.get("sub"))
    if import_id is not None and not granted.allows(import_id):
        raise AuthError("forbidden", f"the token does not allow import {import_id!r}")
    return granted


def authorize_request(request: web.Request, secret: str, import_id: str) -> Claims:
    """The claims of a request's token (``Authorization: Bearer`` or ``?token=``), when
    they allow ``import_id`` (``ADMIN``: an admin token).

    Raises:
      web.HTTPUnauthorized: Without a valid token (JSON ``{"code", "message"}``).
      web.HTTPForbidden: When the token does not allow ``import_id``.
    """
    header = request.headers.get("Authorization", "")
    token = header[7:] if header.startswith("Bearer ") else request.query.get("token")
    try:
        return verify(token, secret, import_id=import_id)
    except AuthError as error:
        RELAY_REFUSALS.labels(error.code).inc()
        status = web.HTTPForbidden if error.code == "forbidden" else web.HTTPUnauthorized
        raise status(
            text=json.dumps({"code": error.code, "message": str(error)}),
            content_type="application/json",
        ) from None
