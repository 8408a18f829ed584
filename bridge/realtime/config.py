"""Where the Realtime leg connects, and with which credentials.

Targets (docs/realtime-protocol.md §1):

=============  =====================================================================  =======
kind           URL                                                                    dialect
=============  =====================================================================  =======
azure          ``wss://RESOURCE/openai/v1/realtime?model=DEPLOYMENT`` (default)       ga
azure-preview  ``wss://RESOURCE/openai/realtime?api-version=V&deployment=DEPLOYMENT``  preview
openai         ``wss://api.openai.com/v1/realtime?model=MODEL``                        ga
emulator       ``ws://127.0.0.1:PORT/openai/v1/realtime?model=DEPLOYMENT``             ga
=============  =====================================================================  =======

Settings come from the variables Azure's own quickstarts use (``AZURE_OPENAI_ENDPOINT``,
``AZURE_OPENAI_DEPLOYMENT_NAME``, ``AZURE_OPENAI_API_KEY``, ``AZURE_OPENAI_API_VERSION``),
``OPENAI_API_KEY`` / ``OPENAI_REALTIME_MODEL``, and the ``[realtime]`` section of the
settings file (keys: ``provider``, ``endpoint``, ``deployment``, ``api_version``,
``openai_model``, ``openai_url``, ``api_key_env``, ``emulator_url``). The environment wins
over the file. Keys are never read from the file itself: ``api_key_env`` names the variable
that holds one.

The choice: ``provider`` when the file says so; otherwise Azure when an endpoint is set
(preview when an API version is set, Entra ID when no key is), OpenAI when
``OPENAI_API_KEY`` is set, else the local emulator.

``AZURE_OPENAI_ENDPOINT`` may be ``https://`` (as the portal shows it) or ``wss://``;
``http://`` / ``ws://`` give a plain ``ws://`` target, which is what tests use to point a
real Azure-shaped URL at a loopback server. Only scheme and host are taken from it.

Keys are hidden from ``repr``/``str``; :func:`redact_url` hides an ``api-key`` query
parameter in any URL that is logged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from bridge.errors import ConfigError

KINDS = ("azure", "azure-preview", "openai", "emulator")
DEFAULT_OPENAI_MODEL = "gpt-realtime"
DEFAULT_OPENAI_URL = "wss://api.openai.com"
DEFAULT_EMULATOR_DEPLOYMENT = "gpt-realtime"

_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@]*@")
_SECRET_QUERY = re.compile(r"(?i)([?&](?:api-key|api_key|key|token|access_token)=)[^&#]*")
_FILE_KEYS = frozenset({"provider", "endpoint", "deployment", "api_version", "openai_model",
                        "openai_url", "api_key_env", "emulator_url"})
_SCHEMES = {"https": "wss", "wss": "wss", "http": "ws", "ws": "ws"}


def redact_url(url: str) -> str:
    """``url`` with any credential replaced by ``***``: in its query string, and the
    userinfo (``user:password@``) before its host."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1***@", url))


@dataclass(frozen=True)
class RealtimeTarget:
    """One upstream: where to connect, in which dialect, with which credential."""

    kind: str
    url: str
    dialect: str
    api_key: str | None = field(default=None, repr=False, compare=False)
    use_entra: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"realtime target kind {self.kind!r} is not one of "
                              f"{', '.join(KINDS)}")
        if self.dialect not in ("ga", "preview"):
            raise ConfigError(f"realtime dialect {self.dialect!r} is not ga or preview")

    def __repr__(self) -> str:
        return (f"RealtimeTarget(kind={self.kind!r}, url={redact_url(self.url)!r}, "
                f"dialect={self.dialect!r}, api_key={'***' if self.api_key else None}, "
                f"use_entra={self.use_entra!r})")

    __str__ = __repr__

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)

    def describe(self) -> str:
        """One line for start-up banners and logs (no secrets)."""
        auth = "api-key" if self.api_key else ("Entra ID" if self.use_entra else "none")
        return f"{self.kind} {self.safe_url} ({self.dialect}, auth: {auth})"


def _base(endpoint: str, where: str) -> str:
    """``scheme://host[:port]`` of an endpoint, with the WebSocket scheme."""
    parts = urlsplit(endpoint.strip())
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ConfigError(f"{where}: {redact_url(endpoint)!r} is not an https:// or wss:// URL")
    return f"{scheme}://{parts.netloc}"


@dataclass(frozen=True)
class RealtimeSettings:
    """The Realtime part of the configuration, validated."""

    provider: str | None = None
    endpoint: str | None = None
    deployment: str | None = None
    api_version: str | None = None
    azure_api_key: str | None = field(default=None, repr=False)
    openai_api_key: str | None = field(default=None, repr=False)
    openai_model: str = DEFAULT_OPENAI_MODEL
    openai_url: str = DEFAULT_OPENAI_URL
    emulator_url: str | None = None

    def __repr__(self) -> str:
        return (f"RealtimeSettings(provider={self.provider!r}, endpoint={self.endpoint!r}, "
                f"deployment={self.deployment!r}, api_version={self.api_version!r}, "
                f"azure_api_key={'***' if self.azure_api_key else None}, "
                f"openai_api_key={'***' if self.openai_api_key else None}, "
                f"openai_model={self.openai_model!r})")

    __str__ = __repr__

    @classmethod
    def from_env(cls, env: Mapping[str, str],
                 file_section: Mapping[str, Any] | None = None) -> RealtimeSettings:
        section = dict(file_section or {})
        unknown = sorted(set(section) - _FILE_KEYS)
        if unknown:
            raise ConfigError(f"[realtime]: unknown key(s) {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(_FILE_KEYS))})")
        for key, value in section.items():
            if not isinstance(value, str):
                raise ConfigError(f"[realtime] {key}: must be a string")

        def pick(var: str, key: str) -> str | None:
            value = env.get(var) or section.get(key)
            return value.strip() if isinstance(value, str) and value.strip() else None

        key_env = section.get("api_key_env")
        azure_key = env.get("AZURE_OPENAI_API_KEY") or None
        openai_key = env.get("OPENAI_API_KEY") or None
        if key_env:
            named = env.get(key_env) or None
            if named is None:
                raise ConfigError(f"[realtime] api_key_env: variable {key_env} is not set")
            azure_key = openai_key = named
        provider = section.get("provider")
        # azure picks the preview endpoint when an API version is set; azure-preview
        # requires one.
        if provider is not None and provider not in KINDS:
            raise ConfigError(f"[realtime] provider: {provider!r} is not one of "
                              f"{', '.join(KINDS)}")
        return cls(
            provider=provider,
            endpoint=pick("AZURE_OPENAI_ENDPOINT", "endpoint"),
            deployment=pick("AZURE_OPENAI_DEPLOYMENT_NAME", "deployment"),
            api_version=pick("AZURE_OPENAI_API_VERSION", "api_version"),
            azure_api_key=azure_key,
            openai_api_key=openai_key,
            openai_model=pick("OPENAI_REALTIME_MODEL", "openai_model") or DEFAULT_OPENAI_MODEL,
            openai_url=pick("OPENAI_REALTIME_URL", "openai_url") or DEFAULT_OPENAI_URL,
            emulator_url=section.get("emulator_url") or None,
        )

    def _chosen(self) -> str:
        if self.provider is not None:
            return self.provider
        if self.endpoint:
            return "azure"
        if self.openai_api_key:
            return "openai"
        return "emulator"

    def target(self, emulator_url: str | None = None) -> RealtimeTarget:
        """The target these settings select (no Azure/OpenAI settings -> the emulator at
        ``emulator_url``, e.g. ``ws://127.0.0.1:8765``)."""
        chosen = self._chosen()
        if chosen in ("azure", "azure-preview"):
            return self._azure(preview=chosen == "azure-preview")
        if chosen == "openai":
            return self._openai()
        base_url = emulator_url or self.emulator_url
        if not base_url:
            raise ConfigError("realtime: no Azure or OpenAI settings and no emulator URL")
        deployment = quote(self.deployment or DEFAULT_EMULATOR_DEPLOYMENT, safe="")
        return RealtimeTarget("emulator",
                              f"{_base(base_url, 'emulator_url')}/openai/v1/realtime"
                              f"?model={deployment}", "ga")

    def _azure(self, *, preview: bool = False) -> RealtimeTarget:
        if preview and not self.api_version:
            raise ConfigError("realtime: provider azure-preview needs an API version "
                              "(AZURE_OPENAI_API_VERSION or [realtime] api_version, e.g. "
                              "2025-04-01-preview)")
        if not self.endpoint:
            raise ConfigError("realtime: AZURE_OPENAI_ENDPOINT (or [realtime] endpoint) "
                              "is not set")
        if not self.deployment:
            raise ConfigError("realtime: AZURE_OPENAI_DEPLOYMENT_NAME (or [realtime] "
                              "deployment) is not set")
        base = _base(self.endpoint, "AZURE_OPENAI_ENDPOINT")
        deployment = quote(self.deployment, safe="")
        use_entra = self.azure_api_key is None
        if self.api_version:
            # docs/realtime-protocol.md §1: the preview path takes api-version and deployment.
            url = (f"{base}/openai/realtime?api-version={quote(self.api_version, safe='')}"
                   f"&deployment={deployment}")
            return RealtimeTarget("azure-preview", url, "preview", self.azure_api_key,
                                  use_entra)
        # docs/realtime-protocol.md §1: no api-version on the GA URL (the service answers
        # 401 to it).
        return RealtimeTarget("azure", f"{base}/openai/v1/realtime?model={deployment}", "ga",
                              self.azure_api_key, use_entra)

    def _openai(self) -> RealtimeTarget:
        if not self.openai_api_key:
            raise ConfigError("realtime: provider openai needs OPENAI_API_KEY")
        base = _base(self.openai_url, "OPENAI_REALTIME_URL")
        return RealtimeTarget("openai",
                              f"{base}/v1/realtime?model={quote(self.openai_model, safe='')}",
                              "ga", self.openai_api_key)
