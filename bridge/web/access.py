"""Who may see and do what: the operator's token and session, the checks of state-changing
requests, and the headers every response carries (no sniffing, no referrer, CORS only
for the configured origins).

The operator is recognised by ``Authorization: Bearer <[http] token>`` (API clients;
compared in constant time) or by the signed session ``/login`` sets: Quart's ``session``
signed with a key made for this run, holding only "operator" and a CSRF token, never the
token itself (cookie ``voicebridge_session``: ``HttpOnly``, ``SameSite=Strict``). With no
token configured every protected route says 401.

A state-changing request (``actions``: the operator's hang-up, a call token) is refused
403 when its ``Origin`` is neither this host nor one of ``[http] cors_origins``, and, when
it rides on the session cookie, unless it sends back the session's CSRF token (header
``X-CSRF-Token`` or form field ``csrf_token``; the pages render it). A bearer token needs
no CSRF token: a browser never adds that header by itself.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import ParamSpec
from urllib.parse import urlsplit

from quart import Response, request, session
from quart.typing import ResponseReturnValue

from bridge import metrics
from bridge.logthrottle import Throttle
from bridge.web.state import web_state

log = logging.getLogger(__name__)
_throttled = Throttle(log)

SESSION_COOKIE = "voicebridge_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"

P = ParamSpec("P")


def token_matches(given: str, token: str | None) -> bool:
    """``given`` is the configured ``token`` (never true when either is empty)."""
    return bool(token) and bool(given) and hmac.compare_digest(given.encode(),
                                                               str(token).encode())


def bearer() -> str:
    """The request's ``Authorization: Bearer`` value ("" when none)."""
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.startswith("Bearer ") else ""


def operator_bearer() -> bool:
    """The request carries the operator's token in its ``Authorization`` header."""
    return token_matches(bearer(), web_state().http.token)


def operator_session() -> bool:
    """The request carries the operator's signed session (set by ``/login``)."""
    return session.get("operator") is True and bool(web_state().http.token)


def authorized() -> bool:
    """The operator: the token in the header, or the signed session."""
    return operator_bearer() or operator_session()


def start_session() -> None:
    """Make the current session the operator's, with a fresh CSRF token."""
    session.clear()
    session["operator"] = True
    session["csrf"] = secrets.token_urlsafe(24)


def csrf_token() -> str:
    """The session's CSRF token, for a page to render ("" without a session)."""
    value = session.get("csrf", "") if operator_session() else ""
    return value if isinstance(value, str) else ""


async def csrf_ok() -> bool:
    expected = csrf_token()
    given = request.headers.get(CSRF_HEADER, "")
    if not given and request.mimetype in ("application/x-www-form-urlencoded",
                                          "multipart/form-data"):
        given = str((await request.form).get(CSRF_FIELD, ""))
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def origin_ok() -> bool:
    """No ``Origin`` (not a browser's cross-site request), this host, or a CORS origin."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin in web_state().http.cors_origins:
        return True
    netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
    return bool(netloc) and netloc == request.host.lower()


def unauthorized() -> Response:
    """401 with a JSON body saying how to get in (or that the dashboard is off)."""
    detail = ("send Authorization: Bearer <token> or log in at /login?token=..."
              if web_state().http.token else
              "the dashboard is off: set [http] token (VOICEBRIDGE_HTTP_TOKEN) to turn it on")
    body = {"error": "unauthorized", "detail": detail}
    response = Response(json.dumps(body), status=401, content_type="application/json")
    response.headers["WWW-Authenticate"] = 'Bearer realm="voicebridge"'
    return response


def forbidden(reason: str, detail: str) -> Response:
    """403 for a state-changing request from a foreign origin or without its CSRF token;
    counted in ``voicebridge_http_refused_total{reason}`` and logged (throttled)."""
    metrics.HTTP_REFUSED.labels(reason=reason).inc()
    _throttled.log(logging.WARNING, f"refused-{reason}", "http: %s %s refused (%s) from %s",
                   request.method, request.path, reason, request.remote_addr or "?")
    body = {"error": "forbidden", "detail": detail}
    return Response(json.dumps(body), status=403, content_type="application/json")


async def action_refusal(*, operator_only: bool = True) -> Response | None:
    """Why a state-changing request must be refused (None: let it through). Without
    ``operator_only`` a request with neither bearer nor session is let through too (the
    view decides), but a session without its CSRF token never is."""
    if not origin_ok():
        return forbidden("origin", "cross-origin request refused")
    if operator_bearer():
        return None
    if operator_session():
        if not await csrf_ok():
            return forbidden("csrf", f"send the page's CSRF token in {CSRF_HEADER}")
        return None
    return unauthorized() if operator_only else None


def protected(view: Callable[P, Awaitable[ResponseReturnValue]]
              ) -> Callable[P, Awaitable[ResponseReturnValue]]:
    """The view, answered 401 unless the request comes from the operator."""
    @functools.wraps(view)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
        if not authorized():
            return unauthorized()
        return await view(*args, **kwargs)
    return guarded


def action(view: Callable[P, Awaitable[ResponseReturnValue]]
           ) -> Callable[P, Awaitable[ResponseReturnValue]]:
    """A state-changing operator view: origin, then operator, then CSRF token checked."""
    @functools.wraps(view)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
        refusal = await action_refusal()
        if refusal is not None:
            return refusal
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


__all__ = ["CSRF_FIELD", "CSRF_HEADER", "SESSION_COOKIE", "action", "action_refusal",
           "authorized", "bearer", "csrf_token", "forbidden", "operator_bearer",
           "operator_session", "origin_ok", "protected", "security_headers", "start_session",
           "token_matches", "unauthorized"]
