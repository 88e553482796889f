"""The hub's Prometheus metrics: what ingest did, how far behind it is, how long traces take.

`HubMetrics` owns its own `CollectorRegistry`, never prometheus_client's global one:
two hubs in one test process (or a test and the app it builds) must not share
counters, and a registry per object also means nothing registers twice.

    >>> metrics = HubMetrics()
    >>> ingestor = Ingestor(store, metrics=metrics)             # doctest: +SKIP
    >>> app = create_app(store, metrics=metrics)                # GET /metrics renders it

Counters are moved where the thing happens: `hub.ingest.Ingestor` counts stored scans,
dead letters and the acks it hands over for publishing, and observes the ingest lag
(the hub's receive time minus ``scanned_at``, for scans whose clock the unit trusted:
an untrusted clock's time is the hub's own estimate, not a lag); the trace endpoint
calls `observe_trace`. "Units online" is not counted at all: it is read from the
``unit_status`` table when Prometheus scrapes, so it is right after a restart too.
The counters start at zero with each process (Prometheus handles the reset).
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "HubMetrics", "OnlineCount"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Prometheus' text exposition format."""

# Lag runs from a second (live) to two days (a unit back after a long outage).
_LAG_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 6 * 3600.0, 86400.0, 2 * 86400.0)
_TRACE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class OnlineCount(Protocol):
    """What the scrape needs of a store (`hub.store.ReportStore` has it)."""

    def units_online(self) -> int: ...


class HubMetrics:
    """The hub's metrics on a registry of their own; `render()` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.scans_ingested = Counter(
            "doorscan_scans_ingested",
            "Scans stored for the first time (resent copies are not counted)",
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "doorscan_dead_letters",
            "Messages and scans refused and kept in the dead-letter table",
            registry=self.registry,
        )
        self.acks_sent = Counter(
            "doorscan_acks_sent",
            "Acks handed to MQTT after the store committed a batch",
            registry=self.registry,
        )
        self.units_online = Gauge(
            "doorscan_units_online",
            "Units whose latest status says online (read from the store at scrape time)",
            registry=self.registry,
        )
        self.ingest_lag_seconds = Histogram(
            "doorscan_ingest_lag_seconds",
            "Hub receive time minus scanned_at, for scans taken with a trusted clock",
            buckets=_LAG_BUCKETS,
            registry=self.registry,
        )
        self.trace_seconds = Histogram(
            "doorscan_trace_seconds",
            "Time to answer a trace request",
            buckets=_TRACE_BUCKETS,
            registry=self.registry,
        )

    def observe_trace(self, seconds: float) -> None:
        """Record one trace's duration (the trace endpoint measures it)."""
        self.trace_seconds.observe(max(0.0, seconds))

    def observe_lag(self, seconds: float) -> None:
        # A scan up to the ingest's future tolerance ahead of the hub's clock has a
        # negative lag; it counts as none rather than vanishing from the histogram.
        self.ingest_lag_seconds.observe(max(0.0, seconds))

    def render(self, store: OnlineCount | None = None) -> bytes:
        """The text exposition; with `store`, "units online" is read from it first."""
        if store is not None:
            self.units_online.set(store.units_online())
        return generate_latest(self.registry)
