"""Who may see what: the token check of the protected routes, and the headers every
response carries (no sniffing, no referrer, CORS only for the configured origins).

The token comes as ``Authorization: Bearer <token>`` or in the cookie ``/login`` sets; it
is compared in constant time. With no token configured every protected route says 401.
"""

from __future__ import annotations

import functools
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import ParamSpec

from quart import Response, request
from quart.typing import ResponseReturnValue

from bridge.web.state import web_state

COOKIE = "voicebridge_token"

P = ParamSpec("P")


def token_matches(given: str, token: str | None) -> bool:
    """``given`` is the configured ``token`` (never true when either is empty)."""
    return bool(token) and bool(given) and hmac.compare_digest(given.encode(),
                                                               str(token).encode())


def authorized() -> bool:
    """The current request carries the token (header first, then the cookie)."""
    given = ""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        given = header[7:].strip()
    elif COOKIE in request.cookies:
        given = request.cookies[COOKIE]
    return token_matches(given, web_state().http.token)


def unauthorized() -> Response:
    """401 with a JSON body saying how to get in (or that the dashboard is off)."""
    detail = ("send Authorization: Bearer <token> or log in at /login?token=..."
              if web_state().http.token else
              "the dashboard is off: set [http] token (VOICEBRIDGE_HTTP_TOKEN) to turn it on")
    body = {"error": "unauthorized", "detail": detail}
    response = Response(json.dumps(body), status=401, content_type="application/json")
    response.headers["WWW-Authenticate"] = 'Bearer realm="voicebridge"'
    return response


def protected(view: Callable[P, Awaitable[ResponseReturnValue]]
              ) -> Callable[P, Awaitable[ResponseReturnValue]]:
    """The view, answered 401 unless the request carries the token."""
    @functools.wraps(view)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
        if not authorized():
            return unauthorized()
        return await view(*args, **kwargs)
    return guarded


async def security_headers(response: Response) -> Response:
    """``after_request`` hook: the headers of every response."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    origin = request.headers.get("Origin")
    if origin and origin in web_state().http.cors_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Allow-Methods"] = "GET, POST"
        response.headers["Vary"] = "Origin"
    return response


__all__ = ["COOKIE", "authorized", "protected", "security_headers", "token_matches",
           "unauthorized"]
