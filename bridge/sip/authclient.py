"""Answering a 401/407 to our own requests inside a call (RFC 3261 §22.2-§22.3), sans-I/O.

When a REFER, BYE (or any request we send inside a dialog) is answered ``401`` with
``WWW-Authenticate`` or ``407`` with ``Proxy-Authenticate``, and the call has credentials
(:data:`CredentialLookup`: the call's trunk, see :mod:`bridge.sip.trunkcalls`), the user
agent sends the request again, same dialog, next CSeq, with ``Authorization`` /
``Proxy-Authorization`` (a re-INVITE of ours, see :mod:`bridge.sip.refresher`, after its
transaction ACKed the challenge). :class:`ChallengeMemory` (one per call) keeps what is needed:

* the challenges met, one per header and realm (of several for one realm the strongest:
  SHA-256 before MD5; one that allows only ``auth-int`` is not answered);
* the nonce count used with each nonce: a later request of the call (a BYE after a
  challenged REFER) carries credentials for the remembered nonce at once, ``nc`` one
  higher (§22.3: "a UAC SHOULD ... reuse the credentials");
* how many times a request was resent for a challenge: once; a second time only when
  the new challenge says ``stale=true``. A challenge to a request that already carried
  credentials ends the request as any other failure would (no loops).

Nothing here reads a clock or a socket; the client nonce comes from the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bridge.errors import SipParseError
from bridge.sip.digest import Challenge, authorization, parse_challenge
from bridge.sip.message import Headers, Request, Response

if TYPE_CHECKING:
    from bridge.sip.calls import Call

#: The user name and password for a call's requests, or None (then challenges fail the
#: request as before). Extend :func:`bridge.sip.trunkcalls.credentials_for` for new lines.
CredentialLookup = Callable[["Call"], "tuple[str, str] | None"]
#: Challenges remembered per call (one per header and realm).
MAX_CHALLENGES = 4
#: Requests resent for a challenge, remembered per call to count the resends.
MAX_RESENDS = 8
_ANSWERS = {401: ("WWW-Authenticate", "Authorization"),
            407: ("Proxy-Authenticate", "Proxy-Authorization")}
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization"})


def _rank(challenge: Challenge) -> tuple[bool, bool]:
    algorithm = challenge.algorithm.upper()
    return algorithm.startswith("SHA-256"), not algorithm.endswith("-SESS")


def _answerable(challenge: Challenge) -> bool:
    """qop=auth or none (auth-int is not done), and -sess only with qop (it needs the
    client nonce the server sees only with qop)."""
    if challenge.qop:
        return "auth" in challenge.qop
    return not challenge.algorithm.upper().endswith("-SESS")


class ChallengeMemory:
    """One call's challenges and nonce counts (see the module docstring)."""

    def __init__(self) -> None:
        #: (credentials header, realm) -> [challenge, last nonce count used]
        self._known: dict[tuple[str, str], tuple[Challenge, int]] = {}
        #: branch of a request we resent -> how many resends led to it
        self._resends: dict[str, int] = {}

    def learn(self, response: Response, sent: Request) -> int | None:
        """Take the challenges of ``response`` (a 401/407 to ``sent``): the number of the
        resend ``sent`` should get (1 or 2), or None when it should not be resent."""
        names = _ANSWERS.get(response.status)
        if names is None:
            return None
        header, answer = names
        best: dict[str, Challenge] = {}
        for value in response.headers.get_lines(header):
            try:
                challenge = parse_challenge(value)
            except SipParseError:
                continue
            if not _answerable(challenge):
                continue
            current = best.get(challenge.realm)
            if current is None or _rank(challenge) > _rank(current):
                best[challenge.realm] = challenge
        resends = self._resends.pop(sent.via[0].branch or "", 0)
        if not best or resends >= 2 or (
                resends == 1 and not all(c.stale for c in best.values())):
            return None
        for realm, challenge in best.items():
            known = self._known.pop((answer, realm), None)
            nc = known[1] if known is not None and known[0].nonce == challenge.nonce else 0
            self._known[(answer, realm)] = (challenge, nc)
            while len(self._known) > MAX_CHALLENGES:
                del self._known[next(iter(self._known))]
        return resends + 1

    def resent(self, request: Request, number: int) -> None:
        """``request`` is resend ``number`` that :meth:`learn` asked for."""
        self._resends[request.via[0].branch or ""] = number
        while len(self._resends) > MAX_RESENDS:
            del self._resends[next(iter(self._resends))]

    def sign(self, request: Request, user: str, password: str,
             cnonce: Callable[[], str]) -> Request:
        """``request`` with credentials for every remembered challenge (none: as is)."""
        if not self._known:
            return request
        items = [(k, v) for k, v in request.headers.items
                 if k.lower() not in _CREDENTIAL_HEADERS]
        for key, (challenge, nc) in list(self._known.items()):
            self._known[key] = (challenge, nc + 1)
            items.append((key[0], authorization(
                challenge, method=request.method, uri=str(request.uri), username=user,
                password=password, cnonce=cnonce(), nc=nc + 1)))
        return Request(request.method, request.uri, Headers(tuple(items)), request.body)

    def __len__(self) -> int:
        return len(self._known)


def resend_headers(request: Request) -> tuple[Headers, str | None]:
    """What a resend of ``request`` carries beyond what the dialog writes (Refer-To, a
    body's type...), and its Content-Type."""
    own = {"via", "max-forwards", "from", "to", "call-id", "cseq", "route", "contact",
           "user-agent", "content-type", "content-length"} | _CREDENTIAL_HEADERS
    extra = Headers(tuple((k, v) for k, v in request.headers.items if k.lower() not in own))
    return extra, request.headers.get("Content-Type")


__all__ = ["ChallengeMemory", "CredentialLookup", "MAX_CHALLENGES", "MAX_RESENDS",
           "resend_headers"]
