"""Dollars: the dry run's estimate, the summary's spend, and `--max_cost_usd`, against OpenAI's published prices.

Expected figures are computed here from the list prices stated below (OpenAI's pricing page), never from the
price data the tool reads: gpt-4o-mini costs $0.15 per million input tokens and $0.60 per million output tokens
online, half that ($0.075 and $0.30) through the Batch API.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor import UNLIMITED, Settings, run_file_job
from rate_limited_processor.cli import main
from rate_limited_processor.core.budget import Budget
from rate_limited_processor.core.costs import CostLedger, Price, PriceBook, format_dollars, usage_tokens
from rate_limited_processor.mock_server import MockConfig, MockServer
from tests.helpers import read_rows, run_cli, write_jsonl

GPT_4O_MINI_INPUT, GPT_4O_MINI_OUTPUT = 0.15, 0.60  # US dollars per million tokens, online
GPT_4O_MINI_BATCH_INPUT, GPT_4O_MINI_BATCH_OUTPUT = 0.075, 0.30
TEXT_EMBEDDING_3_SMALL = 0.02  # per million input tokens; $0.01 through the Batch API

#: English prose of about 100 tokens: a system prompt long enough that input dominates, as in real jobs.
PROSE = (
    "You are a careful assistant for a library catalogue. Read the reader's question, decide which shelf of the "
    "library holds the answer, and reply with the shelf number and one short sentence saying why. Keep to plain "
    "words, never guess a shelf you are not sure of, and say so when the question is outside the catalogue."
)
MAX_TOKENS = 16


def priced_request(i: int) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": PROSE}, {"role": "user", "content": f"Where is book {i}?"}],
        "max_tokens": MAX_TOKENS,
        "metadata": {"id": i},
    }


def list_price_estimate(requests: list[dict[str, Any]]) -> float:
    """The job at list prices by hand: prompt text at a token per 4 characters, plus the completion budget."""
    total = 0.0
    for request in requests:
        prompt_tokens = sum(len(message["content"]) for message in request["messages"]) / 4
        total += prompt_tokens * GPT_4O_MINI_INPUT + request["max_tokens"] * GPT_4O_MINI_OUTPUT
    return total / 1e6


def spent_at_list_price(rows: list[Any]) -> float:
    """What the rows' reported usage costs at list prices."""
    usage = [row[1]["usage"] for row in rows if isinstance(row[1], dict)]
    return sum(u["prompt_tokens"] * GPT_4O_MINI_INPUT + u["completion_tokens"] * GPT_4O_MINI_OUTPUT for u in usage) / 1e6


def dollars_after(text: str, label: str) -> float:
    match = re.search(re.escape(label) + r"\s+\$([0-9.,]+)", text)
    assert match, f"no {label!r} figure in:\n{text}"
    return float(match[1].replace(",", ""))


# -- the done-when checks, through the command ----------------------------------------------------------


def test_a_dry_run_of_1000_gpt_4o_mini_requests_prints_the_list_price_cost_within_20_percent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requests = [priced_request(i) for i in range(1_000)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)

    code = main(["--requests_filepath", str(input_path), "--request_url", "https://api.openai.com/v1/chat/completions", "--dry_run"])

    stdout = capsys.readouterr().out
    assert code == 0
    printed = dollars_after(stdout, "cost (USD)")
    expected = list_price_estimate(requests)
    assert abs(printed - expected) <= 0.2 * expected, (printed, expected, stdout)
    assert "gpt-4o-mini: 1,000 requests" in stdout and "$0.15" in stdout and "$0.6 per million" in stdout


async def test_a_budget_of_half_the_estimate_stops_with_exit_3_having_spent_most_of_it_and_a_larger_one_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = [priced_request(i) for i in range(400)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    output_path = tmp_path / "results.jsonl"
    summary_path = tmp_path / "summary.json"
    assert main(["--requests_filepath", str(input_path), "--request_url", "https://api.openai.com/v1/chat/completions", "--dry_run"]) == 0
    estimate = dollars_after(capsys.readouterr().out, "cost (USD)")
    budget = estimate / 2

    async with MockServer(MockConfig(latency=0.02)) as server:
        common = (
            "--requests_filepath", str(input_path), "--save_filepath", str(output_path), "--request_url", server.url("chat/completions"),
            "--max_requests_per_minute", "60000", "--max_tokens_per_minute", "100000000", "--summary_json", str(summary_path),
        )
        code, _, stderr = await run_cli(*common, "--max_cost_usd", f"{budget:.6f}")
        assert code == 3, stderr
        assert "--max_cost_usd" in stderr and "reached" in stderr and "rerun with a larger --max_cost_usd" in stderr
        rows = read_rows(output_path)
        spent = spent_at_list_price(rows)
        print(f"estimate ${estimate:.6f}, budget ${budget:.6f}: {len(rows)} rows, spent ${spent:.6f} ({spent / budget:.1%} of the budget)")
        assert 0.6 * budget <= spent <= budget, (spent, budget, len(rows))
        summary = json.loads(summary_path.read_text())
        assert summary["exit_code"] == 3 and "--max_cost_usd" in summary["stop_reason"]
        assert math.isclose(summary["cost"]["spent_usd"], spent, rel_tol=1e-3), (summary["cost"], spent)
        assert summary["cost"]["max_cost_usd"] == pytest.approx(budget, rel=1e-5)

        assert "cost (USD)       spent $" in stderr and "budget           $" in stderr

        # The rerun, in process (the command's exit code 3 is what needed a process of its own).
        settings = Settings(request_url=server.url("chat/completions"), api_key=None, limits=UNLIMITED)
        budget_again = Budget(2 * estimate, PriceBook(request_url=settings.request_url))
        stats = await run_file_job(settings, input_path, output_path, budget=budget_again, show_progress=False)
        assert stats.stop_reason is None and stats.already_done == len(rows)

    rows = read_rows(output_path)
    assert sorted(row[2]["id"] for row in rows) == list(range(400)), "every line exactly once"
    assert server.record.served_ok_keys().most_common(1)[0][1] == 1, "no request was paid for twice"


# -- prices ---------------------------------------------------------------------------------------------


def test_the_price_data_has_gpt_4o_minis_list_prices_online_and_through_batch() -> None:
    online = PriceBook().price("gpt-4o-mini")
    batch = PriceBook(batch=True).price("gpt-4o-mini-2024-07-18")
    assert online is not None and batch is not None
    assert (online.input_per_mtok, online.output_per_mtok) == pytest.approx((GPT_4O_MINI_INPUT, GPT_4O_MINI_OUTPUT))
    assert (batch.input_per_mtok, batch.output_per_mtok) == pytest.approx((GPT_4O_MINI_BATCH_INPUT, GPT_4O_MINI_BATCH_OUTPUT))


def test_a_batch_price_the_data_lacks_is_half_the_online_price_and_says_so() -> None:
    price = PriceBook(batch=True).price("text-embedding-3-small")
    assert price is not None and price.input_per_mtok == pytest.approx(TEXT_EMBEDDING_3_SMALL / 2)
    assert "half for batch" in price.source


def test_a_model_nobody_prices_gets_no_figure_and_the_flags_price_every_model() -> None:
    assert PriceBook().price("my-private-llama") is None
    assert PriceBook().price(None) is None
    override = PriceBook(input_per_mtok=1.0, output_per_mtok=3.0).price("my-private-llama")
    assert override == Price(1.0, 3.0, "--price_*_per_mtok")
    assert PriceBook(batch=True, input_per_mtok=1.0, output_per_mtok=3.0).price("x") == Price(0.5, 1.5, "--price_*_per_mtok, half for batch")
    with pytest.raises(ValueError, match="give both"):
        PriceBook(input_per_mtok=1.0)


def test_a_ledger_prices_each_model_and_names_the_ones_without_a_price() -> None:
    ledger = CostLedger()
    ledger.add("gpt-4o-mini", input_tokens=1_000_000, output_tokens=500_000)
    ledger.add("gpt-4o-mini", input_tokens=1_000_000, output_tokens=500_000)
    ledger.add("my-private-llama", input_tokens=10, output_tokens=10)
    report = ledger.priced(PriceBook())
    assert report.total == pytest.approx(2 * GPT_4O_MINI_INPUT + 1 * GPT_4O_MINI_OUTPUT)
    assert report.unpriced == ("my-private-llama",) and report.requests == 3
    record = report.record()
    assert record["usd"] == pytest.approx(0.9) and record["by_model"]["my-private-llama"]["usd"] is None


@pytest.mark.parametrize(
    "response, expected",
    [
        ({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}, (10, 5)),  # chat, completions
        ({"usage": {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}}, (7, 3)),  # responses
        ({"usage": {"prompt_tokens": 12, "total_tokens": 12}}, (12, 0)),  # embeddings
        ({"usage": {"input_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20, "output_tokens": 9}}, (125, 9)),  # Anthropic
        ({"usage": {"prompt_tokens": -1, "completion_tokens": "5"}}, None),  # nonsense is no usage
        ({"choices": []}, None),
        (None, None),
    ],
)
def test_usage_is_read_in_every_endpoints_shape(response: Any, expected: Any) -> None:
    assert usage_tokens(response) == expected


def test_dollars_are_printed_with_the_figures_that_matter() -> None:
    printed = [format_dollars(value) for value in (1234.567, 12.345, 0.5, 0.0123, 0.000421, 0)]
    assert printed == ["$1,234.57", "$12.35", "$0.500", "$0.0123", "$0.000421", "$0.00"]


# -- the budget -----------------------------------------------------------------------------------------


def test_the_budget_counts_finished_attempts_at_their_usage_and_those_in_flight_at_their_estimate() -> None:
    budget = Budget(1.0, PriceBook(input_per_mtok=1.0, output_per_mtok=1.0))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100_000}
    estimate = budget.estimate(body, 300_000, 100_000)  # the prompt, and the completion budget
    assert estimate is not None and estimate == pytest.approx(0.4)
    assert budget.fits(estimate)
    budget.reserve(estimate)
    budget.reserve(estimate)
    assert not budget.fits(estimate), "0.8 committed + 0.4 is past 1.0"
    answer = {"choices": [], "usage": {"prompt_tokens": 300_000, "completion_tokens": 1_000}}
    budget.settle(estimate, budget.actual(body, estimate, answer=answer, succeeded=True, answered=True))
    assert budget.committed == pytest.approx(0.4 + 0.301)
    assert not budget.fits(estimate)
    budget.settle(estimate, budget.actual(body, estimate, answer={"error": {"message": "no"}}, succeeded=False, answered=True))
    assert budget.committed == pytest.approx(0.301) and budget.fits(estimate)
    assert budget.actual(body, estimate, answer=None, succeeded=False, answered=False) == estimate, "no answer: it may have run"
    assert "this run spent $0.301" in budget.stop_reason(estimate)


def test_a_budget_with_no_price_for_the_model_is_refused_before_sending(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [{**priced_request(0), "model": "my-private-llama"}])
    code = main(["--requests_filepath", str(input_path), "--request_url", "http://127.0.0.1:9/v1/chat/completions", "--max_cost_usd", "1"])
    assert code == 2
    assert "there is none for model 'my-private-llama'; give --price_input_per_mtok" in capsys.readouterr().err


def test_prices_looked_up_are_remembered_for_the_day_and_a_cache_not_ours_is_ignored(tmp_path: Path) -> None:
    from rate_limited_processor.core.costs import _PriceCache

    path = tmp_path / "prices.json"
    cache = _PriceCache(path, "genai-prices 1.0, 2026-01-01")
    cache.remember("https://api.openai.com gpt-4o-mini online", Price(0.15, 0.6, "genai-prices 1.0, openai"))
    cache.remember("https://api.openai.com my-llama online", None)
    again = _PriceCache(path, "genai-prices 1.0, 2026-01-01")
    assert again.prices == cache.prices
    assert _PriceCache(path, "genai-prices 1.0, 2026-01-02").prices == {}, "another day: looked up again"
    path.write_text('{"stamp": "genai-prices 1.0, 2026-01-01", "prices": {"x": ["free", 0, ""]}}')
    assert _PriceCache(path, "genai-prices 1.0, 2026-01-01").prices == {}
    blocked = _PriceCache(tmp_path / "not-a-dir" / "prices.json", "s")
    (tmp_path / "not-a-dir").write_text("a file where the directory should be")
    blocked.remember("k", None)
    assert blocked.prices == {"k": None} and blocked.path is None, "kept in memory when it cannot be written"


def test_a_dry_run_in_batch_mode_prices_at_batch_prices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requests = [priced_request(i) for i in range(1_000)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)

    code = main(["--requests_filepath", str(input_path), "--request_url", "https://api.openai.com/v1/chat/completions", "--dry_run", "--mode", "batch"])

    stdout = capsys.readouterr().out
    assert code == 0 and "at batch prices" in stdout and "$0.075" in stdout
    assert dollars_after(stdout, "cost (USD)") == pytest.approx(list_price_estimate(requests) / 2, rel=0.2)
    # No rate limit paces a batch: the plan asks for none.
    assert "within the batch API's 24-hour window" in stdout and "--max_requests_per_minute" not in stdout
