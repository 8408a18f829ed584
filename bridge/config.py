"""Process-wide settings: ``voicebridge.toml`` plus ``VOICEBRIDGE_*`` environment overrides.

Where the file comes from, first match wins: ``--config PATH``, ``$VOICEBRIDGE_CONFIG``,
``./voicebridge.toml`` if it exists; otherwise built-in defaults only.

Every key of every section can be overridden by an environment variable named
``VOICEBRIDGE_<SECTION>_<KEY>`` in upper case (``VOICEBRIDGE_HTTP_PORT=8080``,
``VOICEBRIDGE_SIP_PUBLIC_ADDRESS=203.0.113.7``). Lists are comma-separated in the
environment. The environment wins over the file, so a container is configured with
variables alone.

The ``[sip]`` section is read into :class:`bridge.sip.settings.SipSettings`, the one value
the SIP service and its user agent run on; its fields that the file does not offer (codecs,
timers...) keep their defaults here (``file_keys``).

The ``[realtime]`` section is not interpreted here: it is handed whole to
``bridge.realtime.config.RealtimeSettings.from_env(env, section)``, which also reads the
``AZURE_OPENAI_*`` / ``OPENAI_API_KEY`` variables.

Everything is validated at start-up. A bad value raises :class:`bridge.errors.ConfigError`
whose message names where it came from (file and line, or the variable) and the field.
Secrets (``http.token``, TURN credentials) never appear in ``repr`` or in error messages.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from bridge.errors import ConfigError
from bridge.realtime.config import RealtimeSettings
from bridge.sip.lines import Account, Trunk
from bridge.sip.settings import SipSettings, file_keys

ENV_PREFIX = "VOICEBRIDGE_"
CONFIG_ENV = "VOICEBRIDGE_CONFIG"
DEFAULT_FILE = "voicebridge.toml"


@dataclass(frozen=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    #: Bearer token for the dashboard, call data and admin actions. Unset: ``serve`` makes
    #: a random one for this run and prints a login URL with it in its start-up banner
    #: (stdout only, never logged); without the token those routes answer 401.
    token: str | None = field(default=None, repr=False)
    #: Serve the softphone page ``/`` and ``POST /webrtc/offer``. Who may place a call from
    #: it is ``[webrtc] public``; switch the page off where nobody needs it.
    softphone: bool = True
    #: Origins allowed by CORS. Empty (the default): no CORS headers at all.
    cors_origins: tuple[str, ...] = ()
    #: Ended calls kept in memory for ``/calls`` (the record store keeps them all).
    recent_calls: int = 100


@dataclass(frozen=True)
class RtpConfig:
    port_low: int = 20000
    port_high: int = 20999


@dataclass(frozen=True)
class DialplansConfig:
    #: A folder of ``*.toml`` dialplans (or one file). Empty: ``$VOICEBRIDGE_DIALPLANS``,
    #: else the plans shipped with the package.
    path: str = ""


@dataclass(frozen=True)
class RecordsConfig:
    #: SQLite file of call records ("" = keep records in memory only).
    path: str = "var/calls.db"
    #: A PostgreSQL URL (``postgresql://user@host/db``); when set, records go there instead
    #: of ``path``, shared by every node of a cluster. Its password belongs in the
    #: environment (``VOICEBRIDGE_RECORDS_URL`` or libpq's ``PGPASSWORD``), not the file.
    url: str = field(default="", repr=False)
    #: PostgreSQL only: calls whose records may wait for the database (an outage); past
    #: it the oldest waiting record is dropped and counted.
    queue_max: int = 10000
    #: PostgreSQL only: connections in the pool.
    pool_max: int = 4
    #: PostgreSQL only: seconds shutdown waits to write the records still queued.
    flush_s: int = 5
    #: Folder of call recordings (dialplans with ``[recording]``); "" = none are made.
    #: Files past their plan's retention are deleted at start and daily.
    recordings_path: str = ""


@dataclass(frozen=True)
class ClusterConfig:
    #: This node's name in records, metrics and the cluster dashboard. Empty: the host
    #: name. Unique per process when several nodes share a machine.
    node_id: str = ""
    #: Seconds between a node's heartbeats in the shared record store.
    heartbeat_s: int = 2
    #: A node silent this long is taken for dead: its live calls are marked lost.
    lost_after_s: int = 10

    def node(self) -> str:
        """The node id to use: ``node_id`` or the host name."""
        return self.node_id or socket.gethostname()


@dataclass(frozen=True)
class SummarySettings:
    #: The chat deployment (Azure) or model (OpenAI) that writes post-call summaries
    #: (a dialplan's ``[summary]``), beside the Realtime endpoint, with its credentials.
    chat_deployment: str = "gpt-4o-mini"
    #: Azure only: an API version selects ``/openai/deployments/{deployment}/chat/
    #: completions?api-version=V``; empty: the GA ``/openai/v1/chat/completions``.
    chat_api_version: str = ""
    #: Summaries written at the same time.
    concurrency: int = 2
    #: Ended calls waiting for a summary; past it a call's summary is dropped and counted.
    queue_max: int = 200
    #: Seconds one summary may take, retries (429 Retry-After, back-off) included.
    total_s: int = 300


@dataclass(frozen=True)
class IceServer:
    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class WebRtcConfig:
    #: STUN/TURN servers, e.g. ``[{urls = ["stun:stun.example.net:3478"]}]``. Empty: host
    #: candidates only, which is what a browser on the same host or LAN needs.
    ice_servers: tuple[IceServer, ...] = ()
    #: Codecs offered in preference order; G.711 first keeps the leg at 8 kHz.
    codecs: tuple[str, ...] = ("pcmu", "pcma", "opus")
    max_legs: int = 100
    #: Anyone who reaches the HTTP port may call (no operator login, no call token); only
    #: the rate limit applies. Off: an offer needs the operator token or a call token.
    public: bool = False
    #: Names of the dialplans a browser may reach (the called number picks among them).
    #: Empty: the default dialplan only. Any other number is refused (403).
    dialplans: tuple[str, ...] = ()
    #: A browser leg whose ICE and DTLS are not connected this long after the answer is
    #: closed; its Realtime session is opened only once they are.
    media_timeout_ms: int = 10000
    #: Lifetime of a single-use call token from ``POST /webrtc/token``.
    call_token_ttl_s: int = 60
    #: Offers and call-token requests per client address: a token bucket refilled at
    #: ``rate_per_minute`` holding at most ``rate_burst``. ``rate_per_minute = 0``: no limit.
    rate_per_minute: int = 20
    rate_burst: int = 5


@dataclass(frozen=True)
class Settings:
    http: HttpSettings = HttpSettings()
    sip: SipSettings = SipSettings()
    rtp: RtpConfig = RtpConfig()
    dialplans: DialplansConfig = DialplansConfig()
    records: RecordsConfig = RecordsConfig()
    webrtc: WebRtcConfig = WebRtcConfig()
    cluster: ClusterConfig = ClusterConfig()
    summary: SummarySettings = SummarySettings()
    #: The raw ``[realtime]`` section, for ``RealtimeSettings.from_env``.
    realtime: Mapping[str, Any] = field(default_factory=dict)
    #: Where the settings came from (a path, or "defaults").
    source: str = "defaults"

    def realtime_settings(self, env: Mapping[str, str] | None = None) -> RealtimeSettings:
        """``bridge.realtime.config.RealtimeSettings`` for this process."""
        return RealtimeSettings.from_env(os.environ if env is None else env, self.realtime)


_SECTIONS: dict[str, type[Any]] = {
    "http": HttpSettings,
    "sip": SipSettings,
    "rtp": RtpConfig,
    "dialplans": DialplansConfig,
    "records": RecordsConfig,
    "webrtc": WebRtcConfig,
    "cluster": ClusterConfig,
    "summary": SummarySettings,
}
_SECRET_KEYS = frozenset({"token", "credential", "url"})
_CODECS = frozenset({"pcmu", "pcma", "opus"})
_TRANSPORTS = frozenset({"udp", "tcp", "tls"})
#: Dataclasses read from an array of tables.
_TABLES: frozenset[type[Any]] = frozenset({Account, Trunk})


class _Where:
    """Names the origin of a value in error messages: file:line or the variable."""

    def __init__(self, path: Path | None, text: str) -> None:
        self.path = path
        self.text = text

    def file_key(self, section: str, key: str) -> str:
        if self.path is None:
            return f"[{section}] {key}"
        return f"{self.path}:{self._line(section, key)}: [{section}] {key}"

    def _line(self, section: str, key: str) -> int | str:
        current = ""
        for number, line in enumerate(self.text.splitlines(), start=1):
            header = re.match(r"\s*\[\[?\s*([A-Za-z0-9_.-]+)", line)
            if header:
                current = header.group(1).split(".")[0]
            elif current == section and re.match(rf"\s*{re.escape(key)}\s*=", line):
                return number
        return "?"


def _env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section}_{key}".upper()


def _fail(where: str, message: str, value: Any, key: str) -> ConfigError:
    shown = "<hidden>" if key in _SECRET_KEYS else repr(value)
    return ConfigError(f"{where}: {message} (got {shown})")


def _from_env_text(text: str, hint: Any) -> Any:
    """Turn an environment string into the shape the field expects, before checking."""
    origin = get_origin(hint)
    if origin is tuple:
        return [part.strip() for part in text.split(",") if part.strip()]
    base = _unwrap_optional(hint)
    if base is bool:
        lowered = text.strip().lower()
        table = {"1": True, "true": True, "yes": True, "on": True,
                 "0": False, "false": False, "no": False, "off": False}
        return table.get(lowered, text)
    if base is int:
        try:
            return int(text)
        except ValueError:
            return text
    if base is str and hint is not str and text == "":
        return None   # VOICEBRIDGE_X= (empty) unsets an optional value
    return text


def _unwrap_optional(hint: Any) -> Any:
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _check_value(hint: Any, value: Any, where: str, key: str) -> Any:
    base = _unwrap_optional(hint)
    if value is None and base is not hint:
        return None
    if get_origin(base) is tuple:
        (item_hint, _ellipsis) = get_args(base)
        if not isinstance(value, list | tuple):
            raise _fail(where, "expected a list", value, key)
        return tuple(_check_value(item_hint, item, where, key) for item in value)
    if base is IceServer:
        return _ice_server(value, where)
    if base in _TABLES:
        return _table(base, value, where)
    if base is bool:
        if not isinstance(value, bool):
            raise _fail(where, "expected true or false", value, key)
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, "expected an integer", value, key)
        return value
    if base is str:
        if not isinstance(value, str):
            raise _fail(where, "expected a string", value, key)
        return value
    raise _fail(where, f"unsupported type {base!r}", value, key)  # pragma: no cover


def _table(cls: type[Any], value: Any, where: str) -> Any:
    """One table of an array of tables (``[[sip.accounts]]``) into its dataclass."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: each entry is a table (set these in the file)")
    hints = get_type_hints(cls)
    unknown = sorted(set(value) - set(hints))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; takes {', '.join(hints)}")
    values = {key: _check_value(hints[key], item, f"{where}.{key}", key)
              for key, item in value.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _ice_server(value: Any, where: str) -> IceServer:
    if isinstance(value, str):      # from the environment: one URL per entry
        value = {"urls": [value]}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: each ICE server is a table with 'urls'")
    unknown = set(value) - {"urls", "username", "credential"}
    if unknown:
        raise ConfigError(f"{where}: unknown ICE server key(s) {sorted(unknown)}")
    urls = value.get("urls")
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise ConfigError(f"{where}: 'urls' must be a URL or a list of URLs")
    for url in urls:
        if not re.match(r"^(stun|stuns|turn|turns):", url):
            raise ConfigError(f"{where}: ICE server URL must start with stun:, stuns:, "
                              f"turn: or turns: (got {url!r})")
    username = value.get("username")
    credential = value.get("credential")
    if username is not None and not isinstance(username, str):
        raise ConfigError(f"{where}: ICE 'username' must be a string")
    if credential is not None and not isinstance(credential, str):
        raise ConfigError(f"{where}: ICE 'credential' must be a string")
    return IceServer(urls=tuple(urls), username=username, credential=credential)


def _build_section(name: str, cls: type[Any], table: Mapping[str, Any], env: Mapping[str, str],
                   where: _Where) -> Any:
    hints = get_type_hints(cls)
    names = list(file_keys(cls))
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ConfigError(f"{where.file_key(name, unknown[0])}: unknown key; "
                          f"[{name}] takes {', '.join(names)}")
    values: dict[str, Any] = {}
    for key in names:
        var = _env_name(name, key)
        if var in env:
            raw = _from_env_text(env[var], hints[key])
            values[key] = _check_value(hints[key], raw, var, key)
        elif key in table:
            values[key] = _check_value(hints[key], table[key], where.file_key(name, key), key)
    return cls(**values)


def _check_port(where: str, port: int, *, zero_ok: bool = True) -> None:
    if not (0 if zero_ok else 1) <= port <= 65535:
        raise ConfigError(f"{where}: port out of range (got {port})")


def _validate(s: Settings) -> None:
    """Cross-field checks that a single type cannot express."""
    _check_port("[http] port", s.http.port)
    _check_port("[sip] port", s.sip.port)
    _check_port("[sip] tls_port", s.sip.tls_port)
    _check_port("[rtp] port_low", s.rtp.port_low, zero_ok=False)
    _check_port("[rtp] port_high", s.rtp.port_high, zero_ok=False)
    if s.rtp.port_low > s.rtp.port_high:
        raise ConfigError(f"[rtp]: port_low {s.rtp.port_low} is above port_high "
                          f"{s.rtp.port_high}")
    if s.http.token is not None and len(s.http.token) < 16:
        raise ConfigError("[http] token: use at least 16 characters (got <hidden>)")
    bad = set(s.sip.transports) - _TRANSPORTS
    if bad or not s.sip.transports:
        raise ConfigError("[sip] transports: choose from udp, tcp, tls "
                          f"(got {list(s.sip.transports)})")
    for cidr in s.sip.allow_from:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ConfigError(f"[sip] allow_from: {exc}") from None
    bad = set(s.webrtc.codecs) - _CODECS
    if bad or not s.webrtc.codecs:
        raise ConfigError(f"[webrtc] codecs: choose from pcmu, pcma, opus "
                          f"(got {list(s.webrtc.codecs)})")
    checks: tuple[tuple[str, int], ...] = (
        ("[sip] max_calls", s.sip.max_calls), ("[webrtc] max_legs", s.webrtc.max_legs),
        ("[sip] ring_ms", s.sip.ring_ms),
        ("[http] recent_calls", s.http.recent_calls),
        ("[webrtc] rate_per_minute", s.webrtc.rate_per_minute),
        ("[records] flush_s", s.records.flush_s))
    for where, number in checks:
        if number < 0:
            raise ConfigError(f"{where}: must not be negative (got {number})")
    positive: tuple[tuple[str, int], ...] = (
        ("[webrtc] media_timeout_ms", s.webrtc.media_timeout_ms),
        ("[webrtc] call_token_ttl_s", s.webrtc.call_token_ttl_s),
        ("[webrtc] rate_burst", s.webrtc.rate_burst),
        ("[cluster] heartbeat_s", s.cluster.heartbeat_s),
        ("[records] queue_max", s.records.queue_max), ("[records] pool_max", s.records.pool_max))
    for where, number in positive:
        if number <= 0:
            raise ConfigError(f"{where}: must be above 0 (got {number})")


def _check_cluster(s: Settings) -> None:
    if s.cluster.lost_after_s < 2 * s.cluster.heartbeat_s:
        raise ConfigError(f"[cluster] lost_after_s: at least two heartbeats "
                          f"({2 * s.cluster.heartbeat_s} s; got {s.cluster.lost_after_s})")
    if s.records.url and not s.records.url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("[records] url: a postgresql:// URL (got <hidden>)")


def _apply_turn_env(webrtc: WebRtcConfig, env: Mapping[str, str]) -> WebRtcConfig:
    """``VOICEBRIDGE_WEBRTC_TURN_USERNAME`` / ``_CREDENTIAL`` for turn: URLs from the env."""
    user = env.get(_env_name("webrtc", "turn_username"))
    cred = env.get(_env_name("webrtc", "turn_credential"))
    if user is None and cred is None:
        return webrtc
    servers = tuple(
        dataclasses.replace(s, username=s.username or user, credential=s.credential or cred)
        if any(u.startswith("turn") for u in s.urls) else s
        for s in webrtc.ice_servers)
    return dataclasses.replace(webrtc, ice_servers=servers)


def resolve_path(arg: str | None, env: Mapping[str, str]) -> Path | None:
    """The config file to read, or None for defaults only."""
    if arg:
        return Path(arg)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    default = Path(DEFAULT_FILE)
    return default if default.is_file() else None


def load_settings(path: str | Path | None = None,
                  env: Mapping[str, str] | None = None) -> Settings:
    """Read, override and validate the settings. Raises :class:`ConfigError`."""
    env = os.environ if env is None else env
    file = resolve_path(str(path) if path is not None else None, env)
    text = ""
    data: dict[str, Any] = {}
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read the configuration ({exc.strerror})") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    return settings_from_mapping(data, env, file=file, text=text)


def settings_from_mapping(data: Mapping[str, Any], env: Mapping[str, str], *,
                          file: Path | None = None, text: str = "") -> Settings:
    where = _Where(file, text)
    known = {*_SECTIONS, "realtime"}
    unknown = sorted(set(data) - known)
    if unknown:
        origin = f"{file}: " if file else ""
        raise ConfigError(f"{origin}unknown section [{unknown[0]}]; "
                          f"sections are {', '.join(sorted(known))}")
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        table = data.get(name, {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"{file or 'settings'}: [{name}] must be a table")
        sections[name] = _build_section(name, cls, table, env, where)
    sections["webrtc"] = _apply_turn_env(sections["webrtc"], env)
    realtime = data.get("realtime", {})
    if not isinstance(realtime, Mapping):
        raise ConfigError(f"{file or 'settings'}: [realtime] must be a table")
    # VOICEBRIDGE_REALTIME_<KEY> overrides a key of [realtime]; RealtimeSettings validates.
    prefix = _env_name("realtime", "")
    realtime = {**realtime, **{var[len(prefix):].lower(): value for var, value in env.items()
                               if var.startswith(prefix) and len(var) > len(prefix)}}
    settings = Settings(**sections, realtime=dict(realtime),
                        source=str(file) if file else "defaults")
    _validate(settings)
    _check_cluster(settings)
    return settings
