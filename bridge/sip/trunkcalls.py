"""What a call's line decides beyond admission: its dialplan, and the credentials of the
requests we send in it.

A call belongs to the ``[[sip.trunks]]`` entry whose ``match`` holds the address its INVITE
came from (:func:`bridge.sip.lines.trunk_for`). That trunk

* names the call's dialplan when it sets ``dialplan``: :func:`trunk_extra` puts
  ``trunk`` and ``dialplan`` in the leg's ``extra``, and the call manager uses a dialplan
  named there before matching by number;
* lends its ``auth_user`` and password to our REFER, BYE and other requests in the call
  when the PBX challenges them (:func:`credentials_for`): a PBX that authenticates toward
  a trunk expects the same user name and password back.

Calls that arrive through a registration (``[[sip.accounts]]``: their Request-URI is the
Contact an account registered) answer challenges with that account's user name and
password (``accounts``, :meth:`bridge.sip.registrations.Registrations.credentials`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from bridge.sip.authclient import CredentialLookup
from bridge.sip.calls import Call
from bridge.sip.lines import Trunk, trunk_for
from bridge.sip.message import Uri
from bridge.sip.trunkauth import TrunkAuth


def trunk_extra(trunks: tuple[Trunk, ...], source: str) -> dict[str, str]:
    """The leg ``extra`` entries of a call from ``source``: its trunk's name and dialplan."""
    trunk = trunk_for(trunks, source)
    if trunk is None:
        return {}
    extra = {"trunk": trunk.name}
    if trunk.dialplan:
        extra["dialplan"] = trunk.dialplan
    return extra


#: The user name and password of the account whose registered Contact a URI is, or None.
AccountCredentials = Callable[[Uri], "tuple[str, str] | None"]


def credentials_for(call: Call, *, trunks: tuple[Trunk, ...], auth: TrunkAuth | None,
                    accounts: AccountCredentials | None = None) -> tuple[str, str] | None:
    """The user name and password for the requests we send in ``call``, or None: the
    account it came through, else its trunk's."""
    if accounts is not None:
        found = accounts(call.invite.uri)
        if found is not None:
            return found
    trunk = trunk_for(trunks, call.peer.addr[0])
    if trunk is None or not trunk.auth_user or auth is None:
        return None
    password = auth.password(trunk)
    return None if password is None else (trunk.auth_user, password)


def call_credentials(trunks: tuple[Trunk, ...], auth: TrunkAuth | None,
                     accounts: AccountCredentials | None = None) -> CredentialLookup | None:
    """The user agent's credential lookup (None when no line has credentials)."""
    if auth is None and accounts is None:
        return None
    return functools.partial(credentials_for, trunks=trunks, auth=auth, accounts=accounts)


__all__ = ["call_credentials", "credentials_for", "trunk_extra"]
