"""Checking the Digest credentials the bridge sent, computed here with hashlib (RFC 2617
§3.2.2 with ``qop=auth``), not with the bridge's own digest code, so a shared mistake
cannot pass. For tests that read what the bridge sent from a loopback capture."""

from __future__ import annotations

import hashlib
import re


def credentials(message: str, header: str) -> dict[str, str]:
    """The parameters of the ``Digest`` credentials in ``header`` of ``message``."""
    value = next(line.split(":", 1)[1].strip() for line in message.splitlines()
                 if line.lower().startswith(header.lower() + ":"))
    assert value.startswith("Digest ")
    return {k.lower(): v1 or v2 for k, v1, v2 in
            re.findall(r'([A-Za-z-]+)=(?:"([^"]*)"|([^,\s]+))', value[7:])}


def md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def verify_md5(message: str, header: str, method: str, password: str) -> dict[str, str]:
    """Assert that ``header``'s MD5 response is right for ``password``; its parameters."""
    c = credentials(message, header)
    ha1 = md5(f"{c['username']}:{c['realm']}:{password}")
    ha2 = md5(f"{method}:{c['uri']}")
    expected = md5(f"{ha1}:{c['nonce']}:{c['nc']}:{c['cnonce']}:{c['qop']}:{ha2}")
    assert c["response"] == expected, (message, expected)
    return c


def cseq(message: str) -> tuple[int, str]:
    """The CSeq number and method of ``message``."""
    found = re.search(r"^CSeq:\s*(\d+)\s+(\w+)", message, re.M | re.I)
    assert found is not None, message
    return int(found.group(1)), found.group(2)
