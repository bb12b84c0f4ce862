"""The benchmark report: percentiles within their stated bound, the fields the issue lists, a timeline from
hand-made results, and an HTML page that needs nothing from the network and cannot be scripted by a value.
"""

from __future__ import annotations

import json
import math
import random
import re
from typing import Any

from rate_limited_processor.base.models import AttemptTiming, RequestResult, RequestTimings, ResultKind
from rate_limited_processor.cli import report_settings
from rate_limited_processor.config.settings import Settings
from rate_limited_processor.core.limiter import Limits
from rate_limited_processor.core.stats import RunStats
from rate_limited_processor.ui.report import Distribution, RunReport
from rate_limited_processor.ui.report_html import render_html
from tests.helpers import nearest_rank


def test_percentiles_are_the_exact_nearest_rank_or_at_most_a_thousandth_above() -> None:
    rng = random.Random(1)
    for values in (
        [rng.lognormvariate(-1.5, 0.8) for _ in range(20_000)],   # latencies around 0.2 s, a long tail
        [rng.uniform(0.0005, 0.0019) for _ in range(5_000)],      # below 2 ms: exact to the microsecond
        [0.25] * 99 + [30.0],
    ):
        distribution = Distribution()
        for value in values:
            distribution.record(value)
        summary = distribution.summary()
        assert summary["count"] == len(values)
        assert math.isclose(summary["mean"], sum(values) / len(values), rel_tol=1e-9)
        assert summary["max"] == max(values) and summary["min"] == min(values)
        for percent in (50, 90, 95, 99):
            exact = nearest_rank(values, percent)
            assert -1e-6 <= summary[f"p{percent}"] - exact <= 0.001 * exact + 1e-6, (percent, summary[f"p{percent}"], exact)
        assert sum(summary["histogram"]["counts"]) == len(values)


def result(index: int, *, sent: float, finished: float, tokens: tuple[float, ...] = (), attempts: tuple[AttemptTiming, ...] = (),
           kind: ResultKind = ResultKind.SUCCEEDED, output_tokens: int = 0, scheduled: float | None = None) -> RequestResult:
    attempts = attempts or (AttemptTiming(sent, finished, 200),)
    response = {"choices": [], "usage": {"completion_tokens": output_tokens}} if kind is ResultKind.SUCCEEDED else None
    timings = RequestTimings(scheduled if scheduled is not None else sent, sent, finished, first_byte=sent, tokens=tokens, attempts=attempts)
    return RequestResult(index, {}, None, response, (), len(attempts), kind, timings=timings)


def test_the_report_has_the_fields_of_the_issue_from_hand_made_results() -> None:
    report = RunReport(streamed=True, settings={"request_url": "http://x/v1/chat/completions"})
    report.begin(100.0)
    # One request rate limited once, then answered in 1 s with 3 tokens; one answered at once; one failed after
    # a 500 and a timeout; one invalid line.
    report.add(result(1, scheduled=100.0, sent=101.5, finished=102.5, tokens=(101.7, 102.0, 102.4), output_tokens=3,
                      attempts=(AttemptTiming(100.2, 100.4, 429, rate_limited=True), AttemptTiming(101.5, 102.5, 200))))
    report.add(result(2, sent=100.1, finished=100.6, tokens=(100.3,), output_tokens=1))
    report.add(result(3, sent=102.0, finished=103.2, kind=ResultKind.FAILED,
                      attempts=(AttemptTiming(100.5, 100.9, 500), AttemptTiming(102.0, 103.2, "timeout"))))
    report.add(RequestResult(4, "not json", None, None, ("line 4: not JSON",), 0, ResultKind.INVALID))
    stats = RunStats(Limits(None, None), started_at=100.0, clock=lambda: 104.0)
    stats.finished_at = 104.0

    built = json.loads(json.dumps(report.build(stats)))  # what --report writes
    assert (built["requests"], built["succeeded"], built["failed"], built["invalid"], built["attempts"]) == (4, 2, 1, 1, 5)
    assert built["duration_s"] == 4.0
    assert built["throughput"] == {"requests_per_s": 0.5, "output_tokens_per_s": 1.0}
    assert built["rate_limit_429s"] == 1
    assert built["errors_by_status"] == {"429": 1, "500": 1, "timeout": 1}
    for name in ("latency_s", "ttft_s", "itl_s"):
        assert {"mean", "p50", "p90", "p95", "p99"} <= set(built[name])
    assert built["latency_s"]["count"] == 2 and math.isclose(built["latency_s"]["mean"], 0.75)   # 1.0 and 0.5
    assert math.isclose(built["latency_from_scheduled_s"]["max"], 2.5)                           # 100.0 -> 102.5
    assert built["ttft_s"]["count"] == 2 and math.isclose(built["ttft_s"]["max"], 0.2)          # 0.2 and 0.2
    assert built["itl_s"]["count"] == 2 and math.isclose(built["itl_s"]["max"], 0.4)            # 0.3 and 0.4
    assert built["timeline"] == [
        {"second": 0, "sent": 3, "finished": 1, "in_flight": 0, "rate_limit_429s": 1},  # sent 100.1, 100.2, 100.5; all ended
        {"second": 1, "sent": 1, "finished": 0, "in_flight": 1, "rate_limit_429s": 0},  # sent 101.5
        {"second": 2, "sent": 1, "finished": 1, "in_flight": 1, "rate_limit_429s": 0},  # 102.0 sent; 102.5 ended
        {"second": 3, "sent": 0, "finished": 1, "in_flight": 0, "rate_limit_429s": 0},  # 103.2 ended
    ]


def test_without_stream_there_is_no_token_timing() -> None:
    report = RunReport(streamed=False)
    report.begin(0.0)
    report.add(result(1, sent=0.0, finished=0.5))
    stats = RunStats(Limits(None, None), started_at=0.0, clock=lambda: 1.0)
    built = report.build(stats)
    assert "ttft_s" not in built and "itl_s" not in built and built["latency_s"]["p50"] == 0.5


def sample_report() -> dict[str, Any]:
    report = RunReport(streamed=True, settings={"request_url": 'http://x/v1/chat/completions"><script>alert(1)</script>', "stream": True})
    report.begin(0.0)
    rng = random.Random(2)
    for i in range(500):
        sent = i * 0.02
        ttft = 0.05 + rng.random() * 0.1
        tokens = tuple(sent + ttft + k * 0.01 for k in range(10))
        report.add(result(i, sent=sent, finished=tokens[-1], tokens=tokens, output_tokens=10))
    return report.build(RunStats(Limits(None, None), started_at=0.0, clock=lambda: 10.5))


def test_the_page_is_self_contained_with_a_chart_per_distribution_and_the_timeline() -> None:
    page = render_html(sample_report())
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 5 + 2   # ttft, itl, latency, latency from scheduling, tpot; rate and in flight
    assert "<script" not in page          # a setting's text is escaped, and nothing is scripted
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not re.search(r"""(src|href)\s*=|url\(|@import""", page)  # nothing is fetched
    # The only URLs: the SVG namespace (a name, never fetched) and the endpoint measured, as text.
    assert sorted(set(re.findall(r"https?://[^\s\"'<&]+", page))) == ["http://www.w3.org/2000/svg", "http://x/v1/chat/completions"]
    assert "p95" in page and "Time to first token" in page and "Inter-token latency" in page


def test_the_report_names_the_endpoint_without_its_credentials() -> None:
    key = "sk-proj-" + "k" * 40
    settings = Settings(request_url=f"https://user:hunter2@gw.example/v1/chat/completions?api-key={key}&x=1", api_key=key, stream=True)
    described = report_settings(settings)
    assert described["request_url"] == "https://gw.example/v1/chat/completions"
    assert key not in json.dumps(described) and "hunter2" not in json.dumps(described)
    assert described["stream"] is True and described["arrivals"] == "even"
