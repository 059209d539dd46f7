"""``/healthz`` (is the service and its job store answering?) and ``/metrics`` (Prometheus: streams by state)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from beamstream.service.context import Context
from beamstream.service.problems import Unavailable
from beamstream.service.store import JobStore

router = APIRouter(tags=["service"])


@router.get("/healthz")
def healthz(context: Context) -> dict[str, str]:
    """``ok`` while the service and its job store answer (503 otherwise)."""
    try:
        context.store.healthy()
    except Exception as exc:  # any database failure: unhealthy, said in words
        raise Unavailable(f"job store unavailable: {type(exc).__name__}") from None
    return {"status": "ok"}


def mount_metrics(app: FastAPI, store: JobStore) -> None:
    """Serve ``/metrics`` on ``app``: ``beamstream_service_streams{state}``, read from ``store`` at each scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StreamCollector(store))
    app.mount("/metrics", make_asgi_app(registry))


class StreamCollector(Collector):
    """``beamstream_service_streams{state}``: streams in each state, read from the store at each scrape."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self):  # noqa: ANN201 (prometheus_client's signature)
        family = GaugeMetricFamily("beamstream_service_streams", "Streams in each state.", labels=["state"])
        for state, count in self.store.count_by_state().items():
            family.add_metric([state.value], count)
        yield family
