"""``voicebridge serve``: SIP, RTP, WebRTC and HTTP in one process and one event loop.

Start-up order: settings (``bridge.config``), dialplans, the call record store, the Realtime
target (an in-process emulator when nothing is configured), the shared media clock and the
``CallManager``, then the listeners: SIP (UDP+TCP) and HTTP (Quart on Hypercorn). The
``[sip]`` settings go to the SIP service as loaded (one ``SipSettings`` value), with the
``[rtp]`` port range beside them. The parts are imported when they start, so the other
``voicebridge`` commands do not load the web and media stacks; the types are checked
all the same (``mypy --strict``).

Dashboard access. With ``[http] token`` set, the dashboard, call data and admin actions
need it and the banner never shows it. Without one, a random per-run token
(``secrets.token_urlsafe``) is made at start-up and the banner shows a one-click login URL
(``/login?token=...``) on stdout, so a developer on a fresh machine gets in while anyone
else still gets 401; the token is never written to the log.

The banner also says whether the softphone is public (``[webrtc] public``), and warns when
SIP listens beyond loopback with no ``[sip] allow_from``, or HTTP does with a public
softphone: either lets anyone who reaches the port run calls on the Realtime account.

Shutdown on SIGINT/SIGTERM: stop admitting, end every live call (each writes its record),
then close the listeners, the emulator and the record store, in that order.

``Bridge`` is also what tests and benchmarks use to run a whole bridge in their own loop::

    async with Bridge(settings) as bridge:
        ...bridge.http_url, bridge.sip_address, bridge.manager...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bridge.config import Settings, load_settings
from bridge.errors import CallRejected, ConfigError

if TYPE_CHECKING:
    from quart import Quart

    from bridge.call.call import RealtimeFactory, RealtimeSession
    from bridge.call.cluster import ClusterNode
    from bridge.call.manager import CallManager
    from bridge.call.records import CallRecord, RecordStore
    from bridge.call.summary import SummaryQueue
    from bridge.dialplans.plan import DialplanSet
    from bridge.realtime.auth import EntraTokenProvider
    from bridge.realtime.config import RealtimeTarget
    from bridge.realtime.emulator import Emulator
    from bridge.realtime.profile import SessionProfile
    from bridge.sip.leg import SipLeg
    from bridge.sip.service import SipService

log = logging.getLogger(__name__)

#: How long a readiness answer about the upstream is reused (a TCP connect per probe is cheap,
#: but a load balancer probing every second should not open a connection every second).
UPSTREAM_CHECK_TTL_S = 10.0
#: How long shutdown waits for the last calls to leave the registry after ending them.
CALLS_DRAIN_S = 10.0
#: Bytes of randomness in a per-run dashboard token (32 URL-safe characters).
RUN_TOKEN_BYTES = 24


class Bridge:
    """A running bridge: call manager, SIP service, HTTP app, optional emulator."""

    def __init__(self, settings: Settings, env: Mapping[str, str] | None = None, *,
                 sip: bool | None = None) -> None:
        #: True when the dashboard token was made for this run (none configured).
        self.token_generated = not settings.http.token
        if self.token_generated:
            settings = replace(settings, http=replace(
                settings.http, token=secrets.token_urlsafe(RUN_TOKEN_BYTES)))
        self.settings = settings
        self.env = dict(os.environ if env is None else env)
        self.sip_wanted = settings.sip.enabled if sip is None else sip
        self.manager: CallManager | None = None
        self.store: RecordStore | None = None
        self.cluster: ClusterNode | None = None
        self.summaries: SummaryQueue | None = None
        self.emulator: Emulator | None = None
        self.sip: SipService | None = None
        self.target: RealtimeTarget | None = None
        self.app: Quart | None = None
        self.dialplans_path: Path | None = None
        self.http_host = ""
        self.http_port = 0
        self._http_socket: socket.socket | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._http_stop = asyncio.Event()
        self._token_provider: EntraTokenProvider | None = None
        self._upstream_checked: tuple[float, bool, str] | None = None
        self._closers: list[Callable[[], Awaitable[None]]] = []
        #: Set by a second SIGTERM/SIGINT: end the drain, and stop waiting for BYE answers.
        self.hurry = asyncio.Event()

    # ---- life cycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Bridge:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        from bridge.call.clock import shared_clock  # noqa: PLC0415
        from bridge.call.manager import CallManager  # noqa: PLC0415
        from bridge.metrics import CallEventMetrics  # noqa: PLC0415

        dialplans = self._load_dialplans()
        for trunk in self.settings.sip.trunks:
            if trunk.dialplan and trunk.dialplan not in dialplans:
                raise ConfigError(f"[[sip.trunks]] {trunk.name}: dialplan: no dialplan named "
                                  f"{trunk.dialplan!r} in {self.dialplans_path}")
        store = self.store = await self._open_store()
        self._closers.append(store.close)
        factory = await self._realtime_factory()
        recordings = self.settings.records.recordings_path
        manager = self.manager = CallManager(dialplans, factory, store, shared_clock(),
                                             max_calls=self.settings.sip.max_calls,
                                             call_options={"recordings_path": recordings})
        manager.transcription = (self.target, self._token_provider)
        if recordings:
            self._closers.append(self._sweep_recordings(recordings))

        def live_record(call_id: str) -> CallRecord | None:
            call = manager.calls.get(call_id)
            return call.record if call is not None else None

        manager.add_listener(CallEventMetrics(live_record))
        if self.sip_wanted:
            await self._start_sip(manager)
        # Calls end before SIP stops (closers run in reverse): their BYEs need it.
        self._closers.append(self._shutdown_calls)
        self.cluster = self._cluster(manager)
        self.summaries = self._summaries(manager)
        await self._start_http(manager)
        if self.cluster is not None:        # heartbeats once the HTTP URL is known
            await self.cluster.start()
            self._closers.append(self.cluster.stop)

    def _summaries(self, manager: CallManager) -> SummaryQueue | None:
        """Post-call summaries (``bridge.call.summary``), closed before the record store."""
        from bridge.call.summary import summary_queue  # noqa: PLC0415

        if self.target is None:
            return None
        queue = summary_queue(self.settings.summary, self.target, self._token_provider,
                              manager.store, manager.publish)
        manager.after_call.append(queue.after_call)
        self._closers.append(queue.close)
        return queue
    def _sweep_recordings(self, folder: str) -> Callable[[], Awaitable[None]]:
        """The recordings' retention sweep, now and daily; its closer."""
        from bridge.aio import cancel_and_wait  # noqa: PLC0415
        from bridge.call.recording import sweep_daily  # noqa: PLC0415

        task = asyncio.get_running_loop().create_task(sweep_daily(folder),
                                                      name="recordings-retention")

        async def stop() -> None:
            await cancel_and_wait(task)

        return stop

    def _cluster(self, manager: CallManager) -> ClusterNode | None:
        """The shared live state, with a PostgreSQL store only (``bridge.call.cluster``)."""
        from bridge.call.cluster import ClusterNode  # noqa: PLC0415
        from bridge.call.records_pg import PostgresRecordStore  # noqa: PLC0415

        if not isinstance(self.store, PostgresRecordStore):
            return None
        cluster = self.settings.cluster
        return ClusterNode(self.store, lambda: manager.calls, manager.hang_up,
                           node_id=cluster.node(), http_url=lambda: self.http_url,
                           heartbeat_s=cluster.heartbeat_s, lost_after_s=cluster.lost_after_s)

    async def stop(self) -> None:
        """End calls, then close everything that was opened (reverse order). Idempotent."""
        while self._closers:
            closer = self._closers.pop()
            try:
                await closer()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("error while shutting down")

    async def drain(self) -> None:
        """Stop admitting (SIP INVITEs and OPTIONS get 503, WebRTC offers 503) and let the
        live calls go on for up to ``[sip] drain_s``, or until :attr:`hurry` is set; the
        ones left are ended by :meth:`stop`."""
        manager = self.manager
        if manager is None:
            return
        manager.stop_admitting()
        if self.sip is not None:
            self.sip.drain()
        limit = self.settings.sip.drain_s

        def live() -> int:
            return manager.live + (self.sip.unacked_calls if self.sip is not None else 0)

        if not live() or limit <= 0:
            return
        log.info("draining: %d live call(s) may go on for up to %d s (a second signal "
                 "ends them now)", live(), limit)
        hurry = asyncio.ensure_future(self.hurry.wait())
        try:
            async with asyncio.timeout(limit):
                while live() and not hurry.done():
                    await asyncio.wait((hurry,), timeout=0.1)
        except TimeoutError:
            log.info("drain time over: ending %d call(s)", live())
        finally:
            hurry.cancel()

    async def _shutdown_calls(self) -> None:
        manager = self.manager
        if manager is None:
            return
        if manager.live:
            log.info("ending %d live call(s)", manager.live)
        await manager.shutdown("shutdown")
        # A call still finishing (closing its upstream, writing its record) needs the
        # emulator and the record store a little longer: they close after this returns.
        async with asyncio.timeout(CALLS_DRAIN_S):
            while manager.calls:  # noqa: ASYNC110 (no event for "registry empty")
                await asyncio.sleep(0.05)

    # ---- parts ---------------------------------------------------------------------------

    def _load_dialplans(self) -> DialplanSet:
        from bridge.dialplans.loader import default_dialplans_dir, load_dialplans  # noqa: PLC0415

        folder = self.settings.dialplans.path
        path = Path(folder) if folder else default_dialplans_dir(self.env)
        plans = load_dialplans(path, env=self.env)
        self.dialplans_path = path
        return plans

    async def _open_store(self) -> RecordStore:
        from bridge.call.records import MemoryRecordStore, SqliteRecordStore  # noqa: PLC0415

        records = self.settings.records
        if records.url:
            from bridge.call.records_pg import open_postgres_store  # noqa: PLC0415

            return await open_postgres_store(records.url, self.settings.cluster.node(),
                                             queue_max=records.queue_max,
                                             pool_max=records.pool_max, flush_s=records.flush_s)
        path = records.path
        if not path:
            return MemoryRecordStore()
        store = SqliteRecordStore(path)
        # Calls that were live when a previous run died (kill -9, a power cut) were never
        # closed: close them now, before any call, or their duration grows for ever.
        try:
            closed = await store.close_orphans()
        except Exception:              # the first save will say what is wrong with it
            log.exception("could not look for call records a previous run left open")
            closed = []
        if closed:
            log.warning("closed %d call record(s) a previous run left open (end reason "
                        "crashed, ended at their last save)", len(closed))
        return store

    async def _realtime_factory(self) -> RealtimeFactory:
        from bridge.realtime.client import RealtimeClient  # noqa: PLC0415

        rt = self.settings.realtime_settings(self.env)
        wants_emulator = (rt.provider in (None, "emulator") and not rt.endpoint
                          and not rt.openai_api_key and not rt.emulator_url)
        if wants_emulator:
            from bridge.realtime.emulator import Emulator, EmulatorConfig  # noqa: PLC0415

            emulator = self.emulator = Emulator(EmulatorConfig(host="127.0.0.1", port=0))
            await emulator.__aenter__()
            self._closers.append(self._close_emulator)
            target = self.target = rt.target(emulator.url)
        else:
            target = self.target = rt.target()
        tokens: EntraTokenProvider | None = None
        if target.use_entra:
            from bridge.realtime.auth import EntraTokenProvider  # noqa: PLC0415

            tokens = self._token_provider = EntraTokenProvider()
            self._closers.append(tokens.aclose)

        def factory(profile: SessionProfile,
                    call_log: logging.LoggerAdapter[logging.Logger]) -> RealtimeSession:
            return RealtimeClient(target, profile, token_provider=tokens, log=call_log)
        return factory

    async def _close_emulator(self) -> None:
        if self.emulator is not None:
            await self.emulator.__aexit__(None, None, None)

    async def _start_sip(self, manager: CallManager) -> None:
        from bridge.sip.service import SipService  # noqa: PLC0415

        rtp = self.settings.rtp

        async def on_call(leg: SipLeg) -> None:
            try:
                await manager.handle(leg)
            except CallRejected as exc:
                log.info("SIP call %s rejected: %s", leg.info.call_id, exc)

        for account in self.settings.sip.accounts:
            if account.dialplan and account.dialplan not in manager.dialplans:
                raise ConfigError(f"[[sip.accounts]] {account.user}: dialplan: no dialplan "
                                  f"named {account.dialplan!r}")
        sip = self.sip = SipService(self.settings.sip, on_call,
                                    rtp_ports=(rtp.port_low, rtp.port_high),
                                    can_admit=manager.can_admit, early=manager, env=self.env)
        sip.hurry = self.hurry
        await sip.start()
        self._closers.append(sip.stop)

    def _registrations(self) -> list[dict[str, Any]]:
        regs = self.sip.registrations if self.sip is not None else None
        return regs.snapshot() if regs is not None else []

    async def _start_http(self, manager: CallManager) -> None:
        from hypercorn.asyncio import serve  # noqa: PLC0415
        from hypercorn.config import Config  # noqa: PLC0415

        from bridge.web.app import create_app  # noqa: PLC0415

        self.app = create_app(manager, self.settings, readiness=self.readiness,
                              registrations=self._registrations, cluster=self.cluster)
        if self.summaries is not None:
            from bridge.web.summaries import install  # noqa: PLC0415
            install(self.app, self.summaries)
        http = self.settings.http
        # Bind here (not in Hypercorn) so a port of 0 works and the bound port is known.
        family = socket.AF_INET6 if ":" in http.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((http.host, http.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"[http] cannot listen on {http.host}:{http.port}: "
                              f"{exc.strerror}") from None
        sock.listen(128)
        sock.setblocking(False)
        self._http_socket = sock
        self.http_host, self.http_port = sock.getsockname()[:2]
        config = Config()
        # Hypercorn owns (and closes) the descriptor it is given: give it a duplicate.
        config.bind = [f"fd://{os.dup(sock.fileno())}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = 2.0
        self._http_task = asyncio.ensure_future(
            serve(self.app, config, shutdown_trigger=self._http_stop.wait))
        self._closers.append(self._stop_http)

    async def _stop_http(self) -> None:
        self._http_stop.set()
        if self._http_task is not None:
            try:
                async with asyncio.timeout(5):
                    await self._http_task
            except TimeoutError:
                log.warning("HTTP server did not stop in time")
        if self._http_socket is not None:
            self._http_socket.close()

    # ---- what it tells ---------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        host = self.http_host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.http_port}"

    @property
    def login_url(self) -> str:
        """The dashboard's one-click login URL. It carries the token: stdout only."""
        return f"{self.http_url}/login?token={self.settings.http.token}"

    @property
    def sip_uri(self) -> str | None:
        if self.sip is None:
            return None
        host = (self.settings.sip.public_address or self.sip.public_address
                or self.sip.address or self.settings.sip.host)
        if host in ("0.0.0.0", "::"):
            host = _local_address()
        return f"sip:agent@{host}:{self.sip.port}"

    def banner(self) -> str:
        lines = ["voicebridge is running"]
        if self.sip_uri:
            lines.append(f"  call it over SIP:   {self.sip_uri}  "
                         f"({'+'.join(self.settings.sip.transports).upper()})")
            if self.sip is not None and self.sip.tls is not None:
                base = self.sip_uri.rsplit(":", 1)[0]
                lines.append(f"  SIP over TLS:      {base}:{self.sip.tls_port};transport=tls")
        else:
            lines.append("  SIP:               off")
        if self.settings.http.softphone:
            who = ("PUBLIC: anyone who reaches it may call" if self.settings.webrtc.public
                   else "calls need the dashboard login or a call token")
            lines.append(f"  softphone page:    {self.http_url}/  ({who})")
        if self.token_generated:
            lines.append(f"  dashboard:         {self.login_url}")
            lines.append("                     (one-click login with a token made for this run; "
                         "set [http] token / VOICEBRIDGE_HTTP_TOKEN for a fixed one)")
        else:
            lines.append(f"  dashboard:         {self.http_url}/dashboard  "
                         "(log in with the configured [http] token)")
        lines.append(f"  metrics:           {self.http_url}/metrics")
        target = self.target.describe() if self.target is not None else "not started"
        lines.append(f"  Realtime target:   {target}"
                     + ("  (built-in emulator: an echo agent)" if self.emulator else ""))
        lines.append(f"  dialplans:         {self.dialplans_path}")
        lines.append(f"  settings:          {self.settings.source}")
        lines += [f"  WARNING: {warning}" for warning in self.exposure_warnings()]
        return "\n".join(lines)

    def exposure_warnings(self) -> list[str]:
        """What the banner warns about: listeners beyond loopback that anyone may use."""
        warnings = []
        sip = self.settings.sip
        if self.sip is not None and not _loopback(sip.host) and not sip.allow_from:
            warnings.append(f"SIP listens on {sip.host} with no allowlist ([sip] allow_from "
                            "is empty): anyone who reaches port "
                            f"{self.sip.port} may call the agent")
        http = self.settings.http
        if http.softphone and self.settings.webrtc.public and not _loopback(http.host):
            warnings.append(f"HTTP listens on {http.host} and the softphone is public "
                            "([webrtc] public = true): anyone who reaches port "
                            f"{self.http_port} may call the agent, on your Realtime account")
        return warnings

    async def readiness(self) -> dict[str, tuple[bool, str]]:
        checks: dict[str, tuple[bool, str]] = {
            "http": (self._http_task is not None and not self._http_task.done(), "listening"),
            "calls": (bool(self.manager and self.manager.can_admit()),
                      f"{self.manager.live if self.manager else 0} live"),
        }
        if self.sip_wanted:
            checks["sip"] = (self.sip is not None, "listening" if self.sip else "not started")
        checks["upstream"] = await self._upstream_reachable()
        return checks

    async def _upstream_reachable(self) -> tuple[bool, str]:
        now = time.monotonic()
        cached = self._upstream_checked
        if cached is not None and now - cached[0] < UPSTREAM_CHECK_TTL_S:
            return cached[1], cached[2]
        if self.target is None:
            return False, "not started"
        parts = urlsplit(self.target.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        try:
            async with asyncio.timeout(2.0):
                _reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            result = (False, f"{host}:{port} unreachable ({type(exc).__name__})")
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            result = (True, f"{host}:{port} reachable")
        self._upstream_checked = (now, *result)
        return result


def _loopback(host: str) -> bool:
    """``host`` (a bind address) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False    # a name: it may resolve to anything


def _local_address() -> str:
    """The address other hosts would reach us on (no packet is sent: UDP connect only)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))   # TEST-NET-1: routing lookup only
        return str(s.getsockname()[0])
    return "127.0.0.1"


# ---- the command -----------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="settings file (default $VOICEBRIDGE_CONFIG, else ./voicebridge.toml "
                             "if present)")
    parser.add_argument("--http-port", type=int, default=None,
                        help="HTTP port (overrides [http] port)")
    parser.add_argument("--sip-port", type=int, default=None,
                        help="SIP port (overrides [sip] port)")
    parser.add_argument("--no-sip", action="store_true", help="do not start SIP")


def _settings_from_args(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config, os.environ)
    if args.http_port is not None:
        settings = replace(settings, http=replace(settings.http, port=args.http_port))
    if args.sip_port is not None:
        settings = replace(settings, sip=replace(settings.sip, port=args.sip_port))
    if args.no_sip:
        settings = replace(settings, sip=replace(settings.sip, enabled=False))
    return settings


async def serve(settings: Settings, *, ready: Callable[[Bridge], None] | None = None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    bridge = Bridge(settings)

    def on_signal() -> None:
        # The first SIGTERM/SIGINT drains; the next one ends the calls at once.
        if stop.is_set():
            bridge.hurry.set()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    async with bridge:
        # Everything imported and built at start-up lives for the whole process: move it
        # out of the collector's reach, so full collections stay short while calls run
        # (a full collection of the start-up heap stalled the media clock for >100 ms).
        gc.collect()
        gc.freeze()
        print(bridge.banner(), flush=True)
        if ready is not None:
            ready(bridge)
        await stop.wait()
        await bridge.drain()
        log.info("shutting down")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        settings = _settings_from_args(args)
        from bridge import nodeid  # noqa: PLC0415

        nodeid.identify(settings.cluster.node_id)
        return asyncio.run(serve(settings))
    except ConfigError as exc:
        print(f"voicebridge: {exc}", file=sys.stderr)
        return 2
