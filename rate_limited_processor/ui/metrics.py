"""A run as Prometheus sees it: `--metrics_port PORT` serves `/metrics` in Prometheus' text format while it goes.

Usage::

    async with MetricsServer(port=9464, prices=prices) as metrics:     # bound before anything is sent
        await run_file_job(settings, requests, results, watch=metrics.watch)

Nothing is counted per request for it. A scrape reads, on the run's own event loop, what the run keeps anyway:
`RunStats`' counters, each lane's limits (given, learned from headers, applied by the rate control) and requests
in flight, and the depth of the retry queue. So a run without `--metrics_port` pays nothing, and one with it
pays a few microseconds per scrape. The server is aiohttp's (already a dependency); prometheus-client (the
`metrics` extra) only formats, so names, HELP and TYPE lines and escaping are the reference library's.

Names follow Prometheus' conventions: one prefix, `_total` on counters, base units where there is one
(seconds, dollars), limits per minute as the APIs state them (`..._per_minute` in the name), and labels for the
dimensions (`outcome`, `account`, `model`, `source`). No label or value carries a key or a request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..base.errors import UsageError

if TYPE_CHECKING:
    from ..core.costs import PriceBook
    from ..engine.processor import Processor

__all__ = ["PREFIX", "MetricsServer", "RunCollector", "exposition"]

#: Every family's name starts with this.
PREFIX = "rate_limited_processor"
#: What the endpoint answers with (Prometheus' text format, version 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _require_client() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise UsageError("--metrics_port needs the metrics extra: pip install 'rate_limited_processor[metrics]'") from None
    return prometheus_client


class RunCollector:
    """A prometheus-client collector that reads a run's state when scraped (see the module docstring)."""

    def __init__(self, prices: PriceBook | None = None) -> None:
        self.prices = prices
        #: The run being watched; None before it starts (a scrape then shows only that no run is up).
        self.processor: Processor | None = None
        self.started_at = time.time()

    def watch(self, processor: Processor) -> None:
        """Read this run from now on."""
        self.processor = processor
        self.started_at = time.time()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        def counter(name: str, help_: str, value: float | None = None, labels: Iterable[str] = ()) -> Any:
            return CounterMetricFamily(f"{PREFIX}_{name}", help_, value=value, labels=list(labels) or None)

        def gauge(name: str, help_: str, value: float | None = None, labels: Iterable[str] = ()) -> Any:
            return GaugeMetricFamily(f"{PREFIX}_{name}", help_, value=value, labels=list(labels) or None)

        processor = self.processor
        yield gauge("run_up", "1 while a run is going (0 before it starts and after it ends).", 1.0 if _running(processor) else 0.0)
        yield gauge("run_start_time_seconds", "When the run started, in seconds since the Unix epoch.", self.started_at)
        if processor is None:
            return
        stats = processor.stats

        finished = counter("requests_finished_total", "Requests that reached their final result, by outcome.", labels=["outcome"])
        finished.add_metric(["succeeded"], stats.succeeded)
        finished.add_metric(["failed"], stats.failed)
        finished.add_metric(["invalid"], stats.invalid)
        yield finished
        yield counter("requests_skipped_total", "Requests skipped because an earlier run's results file already holds their row.", stats.already_done)
        yield counter("attempts_total", "HTTP attempts sent, first tries and retries alike.", stats.attempts)
        yield counter("retries_total", "HTTP attempts that were retries.", stats.retries)
        yield counter("rate_limited_responses_total", "Rate-limit 429 answers received.", stats.rate_limit_errors)
        yield counter("tokens_estimated_total", "Tokens charged against the token limit by our estimate, over all attempts.", stats.tokens_charged)
        used = counter("tokens_used_total", "Tokens the API reported using (usage) for the requests that succeeded.", labels=["kind"])
        used.add_metric(["prompt"], stats.reported_prompt_tokens)
        used.add_metric(["completion"], max(0, stats.reported_total_tokens - stats.reported_prompt_tokens))
        yield used
        if self.prices is not None:
            spent = stats.spent.priced(self.prices)
            yield counter("spent_dollars_total", "US dollars the succeeded requests cost by their reported usage (unpriced models count 0).", spent.total)
        budget = processor.budget
        if budget is not None:
            yield gauge("budget_committed_dollars", "US dollars committed against --max_cost_usd: finished attempts plus those in flight.", budget.committed)
            yield gauge("budget_dollars", "The run's budget in US dollars (--max_cost_usd).", budget.limit)

        yield gauge("requests_in_flight", "HTTP attempts sent and not yet answered.", stats.in_flight)
        yield gauge("retries_waiting", "Requests waiting for their retry to come due.", processor.retries_waiting)
        yield gauge("requests_open", "Requests read from the input whose final result is not yet written.", processor.open_requests)
        if stats.total is not None:
            yield gauge("requests_input", "Requests in the input (lines of the requests file).", stats.total)
        yield from self._lanes(processor, gauge)

    def _lanes(self, processor: Processor, gauge: Any) -> Iterator[Any]:
        """Per (account, model) lane: the limits in force by where they come from, and its requests in flight."""
        names = ("requests", "tokens", "output_tokens")
        families = {
            name: gauge(
                f"limit_{name}_per_minute",
                f"The {name.replace('_', ' ')} limit per minute: told (given by flags or the accounts file), learned (from the "
                "API's headers), controlled (what the limiter applies now, after headroom and rate control).",
                labels=["account", "model", "source"],
            )
            for name in names
        }
        in_flight = gauge("lane_requests_in_flight", "HTTP attempts in flight through each account's lane for a model.", labels=["account", "model"])
        for lane in processor.lanes.all():
            tuner = lane.tuner
            where = [lane.account.name, lane.model]
            for name, dimension, applied in (
                ("requests", tuner.requests, lane.applied.requests_per_minute),
                ("tokens", tuner.tokens, lane.applied.tokens_per_minute),
                ("output_tokens", tuner.output_tokens, lane.applied.output_tokens_per_minute),
            ):
                for source, value in (("told", dimension.given), ("learned", dimension.learned), ("controlled", applied)):
                    if value is not None and math.isfinite(value):
                        families[name].add_metric([*where, source], value)
            in_flight.add_metric(where, lane.in_flight)
        yield from families.values()
        yield in_flight


def _running(processor: Processor | None) -> bool:
    return processor is not None and processor.stats.finished_at is None


def exposition(collector: RunCollector) -> bytes:
    """The collector's families in Prometheus' text format (what /metrics answers)."""
    client = _require_client()
    registry = client.CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return bytes(client.generate_latest(registry))


class MetricsServer:
    """`/metrics` on `host:port` for the life of the block, served on the running event loop.

    Entering binds the port, so a port in use is refused (UsageError) before the run sends anything. Port 0
    picks a free one (`port` then says which).
    """

    def __init__(self, port: int, *, host: str = "127.0.0.1", prices: PriceBook | None = None) -> None:
        _require_client()  # refused before anything starts, naming the extra
        self.host = host
        self.port = port
        self.collector = RunCollector(prices)
        self._runner: web.AppRunner | None = None

    def watch(self, processor: Processor) -> None:
        """Serve this run's state (`run_file_job`'s `watch` hook)."""
        self.collector.watch(processor)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=exposition(self.collector), headers={"Content-Type": CONTENT_TYPE})

    async def start(self) -> MetricsServer:
        """Listen (refused with UsageError when the port cannot be had)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise UsageError(f"--metrics_port: cannot listen on {self.host}:{self.port}: {error.strerror or error}") from None
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._runner = runner
        return self

    async def __aenter__(self) -> MetricsServer:
        return await self.start()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"
