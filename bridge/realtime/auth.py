"""Handshake credentials for the Realtime WebSocket (docs/realtime-protocol.md §1).

* Azure with a key: ``api-key: KEY``.
* OpenAI: ``Authorization: Bearer KEY``.
* Azure without a key: Entra ID. ``azure.identity.aio.DefaultAzureCredential`` behind
  ``get_bearer_token_provider(cred, "https://cognitiveservices.azure.com/.default")`` is an
  async callable returning a token string; it caches and refreshes by itself, so it is
  called on *every* connect and reconnect (a reconnect always needs a valid token).
* The emulator: ``api-key`` when the target carries one, else nothing.

``OpenAI-Beta`` is never sent: OpenAI answers it with ``beta_api_shape_disabled`` and close
4000. Header values are secrets: nothing here logs them, and errors name only the kind.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bridge.errors import RealtimeAuthError
from bridge.realtime.config import RealtimeTarget

ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"

TokenProvider = Callable[[], Awaitable[str]]

log = logging.getLogger("bridge.realtime.auth")


class EntraTokenProvider:
    """A lazily created ``DefaultAzureCredential`` bearer-token provider; close it at the end."""

    def __init__(self, scope: str = ENTRA_SCOPE) -> None:
        self._scope = scope
        self._credential: Any = None
        self._provider: TokenProvider | None = None

    async def __call__(self) -> str:
        if self._provider is None:
            # Imported here: the Entra path is optional at run time (a key needs none of it).
            from azure.identity.aio import (  # noqa: PLC0415
                DefaultAzureCredential,
                get_bearer_token_provider,
            )

            self._credential = DefaultAzureCredential()
            self._provider = get_bearer_token_provider(self._credential, self._scope)
        return await self._provider()

    async def aclose(self) -> None:
        if self._credential is not None:
            await self._credential.close()
            self._credential = None
            self._provider = None


async def handshake_headers(target: RealtimeTarget,
                            token_provider: TokenProvider | None) -> list[tuple[str, str]]:
    """The credential headers for one connect attempt (fetches a fresh Entra token)."""
    if target.api_key:
        if target.kind == "openai":
            return [("Authorization", f"Bearer {target.api_key}")]
        return [("api-key", target.api_key)]
    if target.use_entra:
        if token_provider is None:
            raise RealtimeAuthError("Entra ID selected but no token provider")
        try:
            token = await token_provider()
        except RealtimeAuthError:
            raise
        except Exception as exc:
            # The credential chain's messages can be long but carry no secret; still, keep
            # only the exception type so nothing from a token response can leak.
            log.warning("Entra ID token request failed (%s)", type(exc).__name__)
            raise RealtimeAuthError(
                f"Entra ID token request failed ({type(exc).__name__})") from None
        if not token:
            raise RealtimeAuthError("Entra ID token provider returned an empty token")
        return [("Authorization", f"Bearer {token}")]
    return []
