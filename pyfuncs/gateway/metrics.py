"""The gateway's counters, and who may read them (`GET /metrics`, Prometheus' text format)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.requests import Request

from ..auth import bearer
from ..capture import Capture

# Headers a proxy adds: a request that has one was relayed, so it is not this host's own.
# Beyond the names, any header that speaks of forwarding, a client's or an original
# address, or a proxy (X-Forwarded, X-Original-Forwarded-For, Client-IP, X-ProxyUser-Ip,
# X-Envoy-External-Address...). A proxy that adds no header at all (nginx's bare
# proxy_pass, `ssh -L`, socat) cannot be told from a local client: README says what to do.
PROXY_HEADERS = frozenset({"forwarded", "via", "x-real-ip", "true-client-ip", "client-ip",
                           "cf-connecting-ip", "x-client-ip", "x-cluster-client-ip",
                           "fastly-client-ip", "cdn-loop", "x-envoy-external-address"})  # fmt: skip
_PROXY_MARKS = ("forwarded", "real-ip", "client-ip", "original", "proxy", "envoy", "remote")
_ADDRESS_ENDS = ("-ip", "-addr", "-address", "-for", "-host")


def relayed(names: Iterable[str]) -> bool:
    """Whether any of these header names (lower case) says a proxy relayed the request."""
    return any(name in PROXY_HEADERS or name.endswith(_ADDRESS_ENDS)
               or any(mark in name for mark in _PROXY_MARKS) for name in names)  # fmt: skip


@dataclass
class Metrics:
    delivered: int = 0
    changes: int = 0
    slow_consumers: int = 0
    checks: int = 0  # visibility queries: one per (table, identity) per batch
    auth_failures: int = 0
    lag: float = 0.0  # seconds from the commit of the last batch's newest change to its sending
    disconnected_at: float | None = None  # when the feed connection was lost
    feed_reads: int = 0  # reads of the change feed by the hub
    failures: int = 0  # unexpected errors survived (each logged)
    capture: Capture | None = None  # this process's WAL consumer (pyfuncs/capture.py)


def may_read(request: Request, token: str | None) -> bool:
    """Counters tell how busy the database and the gateway are: for this host's loopback (a
    scraper beside the gateway, not a request that any header says a proxy relayed) or,
    when a metrics token is configured, only its bearer."""
    if token is not None:
        given = bearer(request.headers.get("authorization")) or ""
        return hmac.compare_digest(given.encode(), token.encode())
    host = request.client.host if request.client else ""
    return host in ("127.0.0.1", "::1") and not relayed(request.headers.keys())


def exposition(
    m: Metrics, *, connections: dict[str, int], subscriptions: int, lag: float,
    connected: bool, audit_dropped: int,
) -> str:  # fmt: skip
    lines = [
        "# TYPE pyfuncs_gateway_connections gauge",
        *(f'pyfuncs_gateway_connections{{transport="{t}"}} {n}' for t, n in connections.items()),
        "# TYPE pyfuncs_gateway_subscriptions gauge",
        f"pyfuncs_gateway_subscriptions {subscriptions}",
        "# TYPE pyfuncs_gateway_delivery_lag_seconds gauge",
        f"pyfuncs_gateway_delivery_lag_seconds {lag:.6f}",
        "# TYPE pyfuncs_gateway_feed_connected gauge",
        f"pyfuncs_gateway_feed_connected {int(connected)}",
        "# TYPE pyfuncs_gateway_changes_total counter",
        f"pyfuncs_gateway_changes_total {m.changes}",
        "# TYPE pyfuncs_gateway_feed_reads_total counter",
        f"pyfuncs_gateway_feed_reads_total {m.feed_reads}",
        "# TYPE pyfuncs_gateway_messages_delivered_total counter",
        f"pyfuncs_gateway_messages_delivered_total {m.delivered}",
        "# TYPE pyfuncs_gateway_visibility_checks_total counter",
        f"pyfuncs_gateway_visibility_checks_total {m.checks}",
        "# TYPE pyfuncs_gateway_slow_consumers_total counter",
        f"pyfuncs_gateway_slow_consumers_total {m.slow_consumers}",
        "# TYPE pyfuncs_gateway_auth_failures_total counter",
        f"pyfuncs_gateway_auth_failures_total {m.auth_failures}",
        "# TYPE pyfuncs_gateway_failures_total counter",
        f"pyfuncs_gateway_failures_total {m.failures}",
        "# TYPE pyfuncs_gateway_audit_dropped_total counter",
        f"pyfuncs_gateway_audit_dropped_total {audit_dropped}",
    ]
    if m.capture is not None and not m.capture.denied:
        lines += [
            "# TYPE pyfuncs_capture_leading gauge",
            f"pyfuncs_capture_leading {int(m.capture.leading)}",
            "# TYPE pyfuncs_capture_streaming gauge",  # 0: SQL batches (README "Privileges")
            f"pyfuncs_capture_streaming {int(m.capture.leading and bool(m.capture.streaming))}",
            "# TYPE pyfuncs_capture_changes_total counter",
            f"pyfuncs_capture_changes_total {m.capture.captured}",
            "# TYPE pyfuncs_capture_skipped_total counter",
            f"pyfuncs_capture_skipped_total {m.capture.skipped}",
        ]
        if m.capture.slot_wal_bytes is not None:
            lines += [
                "# TYPE pyfuncs_capture_slot_wal_bytes gauge",
                f"pyfuncs_capture_slot_wal_bytes {m.capture.slot_wal_bytes}",
            ]
    return "\n".join(lines) + "\n"
