"""Optional JWT authentication (HS256 with a shared secret, or RS256 with a public key)."""

from __future__ import annotations

import re

import jwt


class Unauthorized(Exception):
    pass


class TokenVerifier:
    """Verifies a token and returns its subject; ``enabled`` is false in anonymous mode."""

    def __init__(self, secret: str = "", public_key: str = "") -> None:
        self._key: str | None = public_key or secret or None
        self._algorithms = ["RS256"] if public_key else ["HS256"]

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def subject(self, token: str | None) -> str:
        if self._key is None:
            raise RuntimeError("authentication is off")
        if not token:
            raise Unauthorized("a token is required")
        try:
            claims = jwt.decode(token, self._key, algorithms=self._algorithms, options={"require": ["sub", "exp"]})
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not 1 <= len(subject) <= 64:
            raise Unauthorized("invalid token: sub must be a string of 1 to 64 characters")
        return subject


# What a bearer token can hold (RFC 6750 b64token; JWTs use a subset).
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/-]+=*")


def bearer_token(authorization: str | None, query_token: str | None) -> str | None:
    """The request's token, or None when there is none or it cannot be a bearer token (so it is never forwarded).

    Browsers cannot set headers on a WebSocket, so a `token` query parameter is accepted too.
    """
    token = query_token
    if authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    if token is None or _TOKEN_RE.fullmatch(token) is None:
        return None
    return token
