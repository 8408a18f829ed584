"""Prometheus metrics of the bridge, one registry per process.

Every part of the bridge increments the metrics defined here; ``/metrics`` (bridge.web)
serves :data:`REGISTRY`. The names are part of the operator's interface (dashboards and
alerts are built on them): add, never rename.

Cost: a labelled child lookup (``.labels(...)``) hashes the label values on every call.
On per-frame paths bind the child once per call or leg and keep it, e.g.::

    self._frames_in = metrics.FRAMES_IN.labels(source="sip")   # once, at set-up
    self._frames_in.inc()                                       # per 20 ms frame

Metric                                   type       labels
--------------------------------------   ---------  ----------------------------
voicebridge_calls_active                 gauge      source
voicebridge_calls_started_total          counter    source
voicebridge_calls_ended_total            counter    reason
voicebridge_sip_tcp_refused_total        counter    (SIP/TCP connections over a cap)
voicebridge_sip_challenges_total         counter    method, outcome (401/407 to our REFER,
                                                               BYE, UPDATE, re-INVITE:
                                                               answered, failed)
voicebridge_sip_session_timer_total      counter    event        (RFC 4028: refreshed,
                                                               refresh_sent, refresh_failed,
                                                               expired)
voicebridge_sip_tcp_dropped_total        counter    reason       (SIP/TCP refused or closed:
                                                               overall, per_source, slow,
                                                               idle, unread, too_large, malformed,
                                                               fd_exhausted (accept failed))
voicebridge_calls_rejected_total         counter    reason       (admission refused: busy,
                                                               sip_forbidden, sip_busy,
                                                               sip_no_rtp_port, sip_unusable_sdp,
                                                               sip_rate_limited, sip_unacked_limit,
                                                               sip_bad_extension,
                                                               sip_session_interval_too_small,
                                                               sip_bad_session_timer,
                                                               sip_no_prack,
                                                               draining,
                                                               webrtc_unauthorized,
                                                               webrtc_rate_limited, webrtc_busy,
                                                               webrtc_media_timeout,
                                                               webrtc_dialplan)
voicebridge_http_refused_total           counter    reason       (state-changing requests
                                                               refused: origin, csrf)
voicebridge_frames_in_total              counter    source       (20 ms frames from legs)
voicebridge_frames_out_total             counter    source       (20 ms frames to legs)
voicebridge_playout_underruns_total      counter    (a tick found nothing to play mid-response)
voicebridge_late_frames_total            counter    (a clock tick ran later than one frame)
voicebridge_rtp_dropped_total            counter    reason       (RtpError.reason, "late", ...)
voicebridge_turn_latency_seconds         histogram  (end of caller speech -> first agent audio)
voicebridge_barge_ins_total              counter
voicebridge_tool_calls_total             counter    name, outcome ("ok" / "error")
voicebridge_tool_duration_seconds        histogram  name
voicebridge_dtmf_digits_total            counter    source
voicebridge_upstream_connects_total      counter    kind         (RealtimeTarget.kind)
voicebridge_upstream_reconnects_total    counter    kind
voicebridge_upstream_errors_total        counter    kind, error  ("auth", "unavailable",
                                                                  "server_error", "lost")
voicebridge_upstream_hung_total          counter    kind, how    (keepalive, watchdog)
voicebridge_upstream_outage_seconds      histogram  (an upstream outage mid-call, start to
                                                     reconnect or fallback)
voicebridge_outage_silence_seconds       histogram  (longest silence a caller heard during
                                                     an upstream outage)
voicebridge_upstream_rate_limit_remaining gauge    name         (requests, tokens: the
                                                     latest rate_limits.updated)
voicebridge_upstream_rate_limit          gauge      name         (the limit itself)
voicebridge_webrtc_legs_active           gauge
voicebridge_sip_registration_up          gauge      account      (1 while a binding is held)
voicebridge_sip_registrations_total      counter    account, result (registered, unregistered,
                                                               auth_failed, rejected, timeout,
                                                               expired, interval_too_brief)
voicebridge_http_sse_clients             gauge
voicebridge_records_queue_depth          gauge      (call records waiting for PostgreSQL)
voicebridge_records_dropped_total        counter    (records dropped: queue full, or unwritten
                                                     at shutdown)
voicebridge_records_write_errors_total   counter    (failed PostgreSQL writes, retried)
voicebridge_cluster_calls_lost_total     counter    (calls of a silent node marked lost)
voicebridge_cluster_hangups_relayed_total counter   outcome      (a hang-up for another node:
                                                               requested, acted, refused)
voicebridge_sip_options_refused_total    counter    reason       (OPTIONS answered 503 so a
                                                               load balancer's probe takes
                                                               the node out: draining,
                                                               at_capacity)
voicebridge_recordings_total             counter    event        (call recordings: started,
                                                               written, failed, expired,
                                                               no_folder)
voicebridge_redacted_items_total         counter    (conversation items deleted upstream
                                                     after a tool took a redacted value)
voicebridge_node_info                    gauge      node, version  (1; only with [cluster]
                                                               node_id)

With ``[cluster] node_id`` set, every series of ``/metrics`` also carries ``node="<id>"``
(added at exposition by :func:`label_node`), so one Prometheus scraping several nodes can
sum by node without relabelling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from bridge.call.events import BargedIn, CallEnded, CallEvent, CallStarted, ToolCalled
from bridge.call.records import CallRecord
from bridge.realtime.events import RateLimits

#: The registry ``/metrics`` serves. Process CPU/memory come along (``process_*``).
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

_NS = "voicebridge"

CALLS_ACTIVE = Gauge("calls_active", "Calls in progress.", ["source"],
                     namespace=_NS, registry=REGISTRY)
CALLS_STARTED = Counter("calls_started", "Calls admitted.", ["source"],
                        namespace=_NS, registry=REGISTRY)
CALLS_ENDED = Counter("calls_ended", "Calls ended, by end reason.", ["reason"],
                      namespace=_NS, registry=REGISTRY)
VOICEMAILS = Counter("voicemails", "Voicemail messages taken, by what ended them.",
                     ["ended_by"], namespace=_NS, registry=REGISTRY)
VOICEMAIL_TRANSCRIPTIONS = Counter("voicemail_transcriptions",
                                   "Voicemail transcriptions, by outcome.", ["outcome"],
                                   namespace=_NS, registry=REGISTRY)
VOICEMAIL_WEBHOOKS = Counter("voicemail_webhooks", "Voicemail webhook posts, by outcome.",
                             ["outcome"], namespace=_NS, registry=REGISTRY)
CALLS_REJECTED = Counter("calls_rejected", "Calls refused at admission.", ["reason"],
                         namespace=_NS, registry=REGISTRY)

FRAMES_IN = Counter("frames_in", "20 ms audio frames received from legs.", ["source"],
                    namespace=_NS, registry=REGISTRY)
FRAMES_OUT = Counter("frames_out", "20 ms audio frames sent to legs.", ["source"],
                     namespace=_NS, registry=REGISTRY)
UNDERRUNS = Counter("playout_underruns", "Clock ticks with nothing to play during a response.",
                    namespace=_NS, registry=REGISTRY)
LATE_FRAMES = Counter("late_frames", "Media clock ticks that ran more than a frame late.",
                      namespace=_NS, registry=REGISTRY)
RTP_DROPPED = Counter("rtp_dropped", "RTP packets dropped, by reason.", ["reason"],
                      namespace=_NS, registry=REGISTRY)

TURN_LATENCY = Histogram(
    "turn_latency_seconds",
    "From the end of the caller's speech to the first agent audio sent to the leg.",
    namespace=_NS, registry=REGISTRY,
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0),
)
BARGE_INS = Counter("barge_ins", "Agent responses interrupted by the caller.",
                    namespace=_NS, registry=REGISTRY)
TOOL_CALLS = Counter("tool_calls", "Tool calls by tool name and outcome.", ["name", "outcome"],
                     namespace=_NS, registry=REGISTRY)
ANALYSIS_RESULTS = Counter("analysis_results", "Live call analyses (out-of-band responses) by "
                           "outcome: ok, invalid, failed, timeout, busy (skipped: too many in "
                           "flight), cancelled (the call ended first), limit (the call's "
                           "turn limit reached).", ["outcome"],
                           namespace=_NS, registry=REGISTRY)
ANALYSIS_ACTIONS = Counter("analysis_actions", "Dialplan actions fired by call analysis.",
                           ["action"], namespace=_NS, registry=REGISTRY)
TOOL_DURATION = Histogram("tool_duration_seconds", "Tool call duration.", ["name"],
                          namespace=_NS, registry=REGISTRY,
                          buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
DTMF_DIGITS = Counter("dtmf_digits", "DTMF digits received from callers.", ["source"],
                      namespace=_NS, registry=REGISTRY)
TURNS_DECIDED = Counter("turns_decided", "Caller turns the bridge decided the reply to "
                        "([turns] hook), by hook kind and outcome.", ["hook", "outcome"],
                        namespace=_NS, registry=REGISTRY)
LOCAL_BARGE_INS = Counter("local_barge_ins", "Barge-ins started by the bridge's own voice "
                          "activity detector ([turns]).", namespace=_NS, registry=REGISTRY)
LOCAL_BARGE_INS_UNCONFIRMED = Counter(
    "local_barge_ins_unconfirmed", "Early barge-ins the server never confirmed with its own "
    "speech_started (a noise taken for speech; the agent was asked to go on).",
    namespace=_NS, registry=REGISTRY)

UPSTREAM_CONNECTS = Counter("upstream_connects", "Realtime sessions opened.", ["kind"],
                            namespace=_NS, registry=REGISTRY)
UPSTREAM_RECONNECTS = Counter("upstream_reconnects", "Realtime sessions re-opened mid-call.",
                              ["kind"], namespace=_NS, registry=REGISTRY)
UPSTREAM_ERRORS = Counter("upstream_errors", "Realtime upstream errors by kind.",
                          ["kind", "error"], namespace=_NS, registry=REGISTRY)
RATE_LIMIT_REMAINING = Gauge("upstream_rate_limit_remaining",
                             "What the Realtime account has left of each rate limit, as the "
                             "latest rate_limits.updated said.", ["name"], namespace=_NS,
                             registry=REGISTRY)
RATE_LIMIT = Gauge("upstream_rate_limit", "Each Realtime rate limit, as the latest "
                   "rate_limits.updated said.", ["name"], namespace=_NS, registry=REGISTRY)
UPSTREAM_HUNG = Counter("upstream_hung", "Realtime sessions dropped as hung.",
                        ["kind", "how"], namespace=_NS, registry=REGISTRY)
_OUTAGE_BUCKETS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)
UPSTREAM_OUTAGE = Histogram("upstream_outage_seconds",
                            "Upstream outages mid-call, from the loss to a new session or "
                            "the fallback.", namespace=_NS, registry=REGISTRY,
                            buckets=_OUTAGE_BUCKETS)
OUTAGE_SILENCE = Histogram("outage_silence_seconds",
                           "Longest silence a caller heard during an upstream outage.",
                           namespace=_NS, registry=REGISTRY, buckets=_OUTAGE_BUCKETS)

SIP_CHALLENGES = Counter("sip_challenges", "401/407 to the bridge's own requests in a call, "
                         "by method and outcome (answered: sent again with credentials; "
                         "failed).", ["method", "outcome"], namespace=_NS, registry=REGISTRY)
SIP_SESSION_TIMER = Counter("sip_session_timer", "SIP session timer (RFC 4028) events: "
                            "refreshed (by the far end), refresh_sent, refresh_failed, "
                            "expired (the call was ended with a BYE).", ["event"],
                            namespace=_NS, registry=REGISTRY)
SIP_TCP_REFUSED = Counter("sip_tcp_refused", "SIP/TCP connections closed at once: the "
                          "connection cap was reached.", namespace=_NS, registry=REGISTRY)
SIP_TCP_DROPPED = Counter("sip_tcp_dropped", "SIP/TCP connections refused or closed by a "
                          "limit, and accepts failed for lack of file descriptors, by reason.",
                          ["reason"], namespace=_NS, registry=REGISTRY)
SIP_TLS_HANDSHAKE_FAILED = Counter(
    "sip_tls_handshake_failed", "SIP/TLS handshakes that failed, by side (server: a peer's "
    "connection to us; client: ours to a server) and reason (protocol, certificate, "
    "timeout, closed).", ["side", "reason"], namespace=_NS, registry=REGISTRY)
WEBRTC_LEGS_ACTIVE = Gauge("webrtc_legs_active", "WebRTC peer connections open.",
                           namespace=_NS, registry=REGISTRY)
SUMMARIES = Counter("summaries", "Post-call summaries by outcome: done, failed, dropped "
                    "(queue full), webhook_delivered, webhook_failed.", ["outcome"],
                    namespace=_NS, registry=REGISTRY)
HTTP_REFUSED = Counter("http_refused", "State-changing HTTP requests refused: a foreign "
                       "Origin, or a session request without its CSRF token.", ["reason"],
                       namespace=_NS, registry=REGISTRY)
SIP_REGISTRATION_UP = Gauge("sip_registration_up", "1 while the account's registration "
                            "is held at its registrar, else 0.", ["account"],
                            namespace=_NS, registry=REGISTRY)
SIP_REGISTRATIONS = Counter("sip_registrations", "Answers to our REGISTERs (and timeouts), "
                            "by account and result.", ["account", "result"],
                            namespace=_NS, registry=REGISTRY)
SSE_CLIENTS = Gauge("http_sse_clients", "Clients following /calls/events.",
                    namespace=_NS, registry=REGISTRY)
RECORDS_QUEUE = Gauge("records_queue_depth", "Call records waiting to be written to "
                      "PostgreSQL.", namespace=_NS, registry=REGISTRY)
RECORDS_DROPPED = Counter("records_dropped", "Call records dropped unwritten: the queue was "
                          "full, or PostgreSQL was away at shutdown.",
                          namespace=_NS, registry=REGISTRY)
RECORDS_WRITE_ERRORS = Counter("records_write_errors", "Failed writes of call records to "
                               "PostgreSQL (each is retried).", namespace=_NS, registry=REGISTRY)
CLUSTER_CALLS_LOST = Counter("cluster_calls_lost", "Calls of a node that stopped heartbeating, "
                             "marked lost.", namespace=_NS, registry=REGISTRY)
CLUSTER_HANGUPS = Counter("cluster_hangups_relayed", "Hang-ups of a call on another node: "
                          "requested, acted on by the owner, refused.", ["outcome"],
                          namespace=_NS, registry=REGISTRY)
OPTIONS_REFUSED = Counter("sip_options_refused", "OPTIONS answered 503 (draining, or at "
                          "capacity), so a SIP load balancer's probe takes this node out.",
                          ["reason"], namespace=_NS, registry=REGISTRY)

RECORDINGS = Counter("recordings", "Call recordings: started, written (closed whole), "
                     "failed (could not be opened or written), expired (deleted by the "
                     "retention sweep), no_folder (a plan records but [records] "
                     "recordings_path is empty).", ["event"], namespace=_NS, registry=REGISTRY)
REDACTED_ITEMS = Counter("redacted_items", "Conversation items deleted from the model's "
                         "context after the tool that needed a redacted value had run.",
                         namespace=_NS, registry=REGISTRY)


class _NodeLabelled(Collector):
    """``registry`` with ``node="<id>"`` added to every sample, at exposition only."""

    def __init__(self, registry: CollectorRegistry, node: str) -> None:
        self._registry = registry
        self._node = node

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [
                Sample(s.name, {**s.labels, "node": self._node}, s.value, s.timestamp,
                       s.exemplar) for s in family.samples]
            yield labelled


_exposed: Collector = REGISTRY
_NODE_INFO = Gauge("node_info", "This process's node id (a label of every series) and "
                   "version; 1.", ["version"], namespace=_NS,
                   registry=None)                  # registered by label_node


def label_node(node: str, version: str) -> None:
    """Name this process's node: every series gets ``node="<node>"`` and
    ``voicebridge_node_info{node, version}`` is 1 (``[cluster] node_id``)."""
    global _exposed
    if _exposed is REGISTRY:
        REGISTRY.register(_NODE_INFO)
    _NODE_INFO.labels(version=version).set(1)
    _exposed = _NodeLabelled(REGISTRY, node)


def observe_rate_limits(event: RateLimits) -> None:
    """``rate_limits.updated`` from any call's session: the account's latest figures."""
    for limit in event.limits:
        RATE_LIMIT.labels(name=limit.name).set(limit.limit)
        RATE_LIMIT_REMAINING.labels(name=limit.name).set(limit.remaining)


def render() -> tuple[bytes, str]:
    """The exposition text of :data:`REGISTRY` and its content type."""
    return generate_latest(_exposed), CONTENT_TYPE_LATEST


class CallEventMetrics:
    """Turns the call manager's events into the call-level metrics above.

    Attach with ``manager.add_listener(CallEventMetrics(lookup))`` where ``lookup(call_id)``
    returns the live call's record (for its per-turn latencies). The call engine itself
    only emits events; counting them here keeps one place that increments each call-level
    metric (the media paths count frames, RTP drops and upstream errors themselves, per
    frame or per connection).
    """

    def __init__(self, lookup: Callable[[str], CallRecord | None]) -> None:
        self._lookup = lookup
        self._source: dict[str, str] = {}

    def __call__(self, event: CallEvent) -> None:
        match event:
            case CallStarted(call_id=call_id, source=source):
                source = source or "unknown"
                self._source[call_id] = source
                CALLS_STARTED.labels(source=source).inc()
                CALLS_ACTIVE.labels(source=source).inc()
            case CallEnded():
                self._ended(event)
            case BargedIn():
                BARGE_INS.inc()
            case ToolCalled(name=name, ok=ok):
                TOOL_CALLS.labels(name=name, outcome="ok" if ok else "error").inc()

    def _ended(self, event: CallEnded) -> None:
        source = self._source.pop(event.call_id, None)
        if source is None:
            return                      # started before this listener was attached
        CALLS_ACTIVE.labels(source=source).dec()
        CALLS_ENDED.labels(reason=event.reason or "unknown").inc()
        record = self._lookup(event.call_id)
        for turn in record.turns if record is not None else ():
            if turn.total_ms is not None:
                TURN_LATENCY.observe(turn.total_ms / 1000)
