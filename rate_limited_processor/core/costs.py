"""Dollars: what requests are estimated to cost before they are sent, and what they cost once answered.

Usage::

    prices = PriceBook(request_url="https://api.openai.com/v1/chat/completions")   # batch=True for the Batch API
    price = prices.price("gpt-4o-mini")        # None: no price known (no dollar figure is made up); flex=True: Flex
    price.dollars(input_tokens=1_200, output_tokens=300)

    ledger = CostLedger()
    ledger.add("gpt-4o-mini", input_tokens=1_200, output_tokens=300)
    report = ledger.priced(prices)             # per model and in total; models without a price are named

Prices come from `genai-prices` (Pydantic's maintained price data, bundled in the package: nothing is fetched),
for the provider whose API the URL names (by its host, else by its path: Gemini's on any host), else OpenAI's (the
API this tool speaks; a local mock or gateway in front of OpenAI is priced as OpenAI). `--price_input_per_mtok` / `--price_output_per_mtok` replace it for every
model (private deployments, models it does not know). Batch prices are the package's batch price where it has
one (it differs from the online price), else half the online price, which is the Batch API's discount. A Flex
request (`"service_tier": "flex"`, `registry.is_flex`) is priced at that batch price too, as OpenAI prices Flex at
Batch API rates; the reports show its models apart, as "gpt-4o-mini (flex)".

A body that names no model is priced as the model the URL names, where it names one (Gemini's
`.../models/MODEL:generateContent`). An estimate prices the prompt at the input price and the whole completion budget at the output price: an
upper bound, as the token estimate is. Actual cost prices the API's reported `usage` (prompt or input tokens,
completion or output tokens); cached input tokens are priced as uncached ones, so it errs high too.
Pure apart from the price lookup, which reads the bundled data once per model, and remembers what it found for the
day in the user's cache directory (`~/.cache/rate_limited_processor/prices.json`): importing the price data costs
about 0.4 s (it is built on pydantic), which a run then spends only once a day per model.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..base import strict_json
from ..base.atomic_write import write_json_atomically
from ..providers.registry import DEFAULT_API_ROOT, DEFAULT_PRICE_PROVIDER, is_flex, model_in_url, price_provider_for, usage_in_answer

__all__ = [
    "Price",
    "PriceBook",
    "CostLedger",
    "ModelCost",
    "CostReport",
    "package_price",
    "usage_tokens",
    "model_of",
    "format_dollars",
    "BATCH_DISCOUNT",
    "UNKNOWN_MODEL",
    "FLEX_SUFFIX",
    "is_flex",
]

#: What the Batch API charges of the online price, where the price data has no batch price of its own.
BATCH_DISCOUNT = 0.5
#: How a request without a model (an Azure deployment, a server that needs none) is named in cost reports.
UNKNOWN_MODEL = "(no model)"
#: How a model's Flex requests are named in cost reports, after the model.
FLEX_SUFFIX = " (flex)"
#: Tokens priced per lookup, scaled up to a million: small enough that no long-context tier applies.
_PROBE_TOKENS = 1_000
_MTOK = 1_000_000
#: The provider priced when the URL names none the price data knows (localhost, a gateway).
_DEFAULT_PROVIDER = DEFAULT_PRICE_PROVIDER


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens, and where the figure came from (shown beside every dollar figure)."""

    input_per_mtok: float
    output_per_mtok: float
    source: str

    def dollars(self, input_tokens: float, output_tokens: float) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / _MTOK


#: How a model's price is looked up: (model, provider API URL, batch) -> Price, or None when not known.
PriceLookup = Callable[[str, str, bool], Price | None]


def package_price(model: str, request_url: str, batch: bool) -> Price | None:
    """The price `genai-prices` has for `model` at the provider `request_url` names: by its host, else by the API its
    path speaks (a mock or gateway in front of Gemini is priced as Google), else OpenAI; None if none."""
    parts = urlsplit(request_url)
    host = f"{parts.scheme}://{parts.hostname or ''}"  # providers are told apart by host; a local mock's port changes
    speaks = price_provider_for(request_url)
    key = f"{host} {speaks} {model} {'batch' if batch else 'online'}"
    cache = _price_cache()
    if key in cache.prices:
        return cache.prices[key]
    price = _package_price(model, _provider_for(host, speaks), batch)
    cache.remember(key, price)
    return price


class _PriceCache:
    """Prices looked up today with this version of the price data, kept in the user's cache directory.

    Anything wrong with the file (missing, unreadable, another day or version, not ours) is an empty cache, and a
    cache that cannot be written is only kept in memory: the price data is always the source.
    """

    __slots__ = ("path", "stamp", "prices")

    def __init__(self, path: Path | None, stamp: str) -> None:
        self.path = path
        self.stamp = stamp
        self.prices: dict[str, Price | None] = {}
        if path is None:
            return
        try:
            record = strict_json.loads(path.read_text(encoding="utf-8"))
            if record["stamp"] == stamp:
                self.prices = {key: _price_of(value) for key, value in record["prices"].items()}
        except (OSError, UnicodeDecodeError, strict_json.InvalidJSON, KeyError, TypeError, ValueError, IndexError, AttributeError):
            self.prices = {}

    def remember(self, key: str, price: Price | None) -> None:
        self.prices[key] = price
        if self.path is None:
            return
        prices = {name: None if value is None else [value.input_per_mtok, value.output_per_mtok, value.source] for name, value in self.prices.items()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomically(self.path, {"stamp": self.stamp, "prices": prices})
        except OSError:
            self.path = None  # read-only home, full disk: remembered for this process only


def _price_of(value: Any) -> Price | None:
    return None if value is None else Price(float(value[0]), float(value[1]), str(value[2]))


@functools.cache
def _price_cache() -> _PriceCache:
    try:
        version = metadata.version("genai-prices")
    except metadata.PackageNotFoundError:
        version = "unknown"
    stamp = f"genai-prices {version}, {time.strftime('%Y-%m-%d', time.gmtime())}"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return _PriceCache(Path(base) / "rate_limited_processor" / "prices.json", stamp)


@functools.cache
def _provider_for(request_url: str, speaks: str = _DEFAULT_PROVIDER) -> str:
    """The price data's provider for a host, else `speaks` (the provider whose API the URL's path is)."""
    from genai_prices import data_snapshot

    try:
        return str(data_snapshot.get_snapshot().find_provider(None, None, request_url).id)
    except LookupError:
        return speaks


@functools.cache
def _package_price(model: str, provider: str, batch: bool) -> Price | None:
    import genai_prices
    from genai_prices import Usage, calc_price

    def per_mtok(input_tokens: int, output_tokens: int, context: dict[str, str] | None) -> float:
        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        calculation = calc_price(usage, model_ref=model, provider_id=provider, price_context=context)
        return float(calculation.total_price) * _MTOK / _PROBE_TOKENS

    try:
        online = Price(per_mtok(_PROBE_TOKENS, 0, None), per_mtok(0, _PROBE_TOKENS, None), f"genai-prices {genai_prices.__version__}, {provider}")
        if not batch:
            return online
        context = {"processing": "batch"}
        priced = Price(per_mtok(_PROBE_TOKENS, 0, context), per_mtok(0, _PROBE_TOKENS, context), f"{online.source} batch price")
    except (LookupError, ValueError):
        return None
    if (priced.input_per_mtok, priced.output_per_mtok) != (online.input_per_mtok, online.output_per_mtok):
        return priced
    # The data gives the online price where it has no batch price: the Batch API's discount applies to it.
    return Price(online.input_per_mtok * BATCH_DISCOUNT, online.output_per_mtok * BATCH_DISCOUNT, f"{online.source}, half for batch")


class PriceBook:
    """The price of each model for one run: the flags' prices if given, else the price data's. Remembered per model."""

    __slots__ = ("request_url", "batch", "url_model", "_override", "_lookup", "_prices", "_flex_prices")

    def __init__(
        self,
        *,
        request_url: str = DEFAULT_API_ROOT,
        batch: bool = False,
        input_per_mtok: float | None = None,
        output_per_mtok: float | None = None,
        lookup: PriceLookup = package_price,
    ) -> None:
        if (input_per_mtok is None) != (output_per_mtok is None):
            raise ValueError("give both --price_input_per_mtok and --price_output_per_mtok (0 for a side that is free), or neither")
        for value in (input_per_mtok, output_per_mtok):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"a price per million tokens must be a number >= 0, got {value}")
        self.request_url = request_url
        self.batch = batch
        #: The model the URL names (Gemini's .../models/MODEL:generateContent): a body without one is priced as it.
        self.url_model = model_in_url(request_url)
        self._override: Price | None = None
        if input_per_mtok is not None and output_per_mtok is not None:
            scale = BATCH_DISCOUNT if batch else 1.0
            source = "--price_*_per_mtok" + (", half for batch" if batch else "")
            self._override = Price(input_per_mtok * scale, output_per_mtok * scale, source)
        self._lookup = lookup
        self._prices: dict[str | None, Price | None] = {}
        self._flex_prices: dict[str | None, Price | None] = {}

    def __repr__(self) -> str:
        return f"PriceBook(batch={self.batch}, override={self._override})"

    def price(self, model: str | None, *, flex: bool = False) -> Price | None:
        """The price for requests of `model` (None: the model the URL names, if any; `flex`: Flex ones, at the batch
        price); None when no price is known for it (no figure is made up)."""
        model = model or self.url_model
        if flex and not self.batch:
            return self._flex_price(model)
        if self._override is not None:
            return self._override
        if model not in self._prices:
            self._prices[model] = self._lookup(model, self.request_url, self.batch) if model else None
        return self._prices[model]

    def _flex_price(self, model: str | None) -> Price | None:
        """Flex's price: the batch price (OpenAI prices Flex at Batch API rates)."""
        if model not in self._flex_prices:
            override = self._override
            if override is not None:
                half = (override.input_per_mtok * BATCH_DISCOUNT, override.output_per_mtok * BATCH_DISCOUNT)
                price: Price | None = Price(*half, f"{override.source}, half for flex")
            else:
                batch = self._lookup(model, self.request_url, True) if model else None
                price = None if batch is None else Price(batch.input_per_mtok, batch.output_per_mtok, f"{batch.source} (flex: the batch price)")
            self._flex_prices[model] = price
        return self._flex_prices[model]


def model_of(body: Mapping[str, Any], response: Mapping[str, Any] | None = None) -> str | None:
    """The model a request is priced as: the one it asks for, else the one the answer names."""
    for source in (body, response or {}):
        model = source.get("model")
        if isinstance(model, str) and model:
            return model
    return None


def usage_tokens(response: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """(input, output) tokens the API's `usage` reports (chat, completions, embeddings, responses), or a provider's
    own field for them (`registry.usage_in_answer`); None if none."""
    usage = response.get("usage") if isinstance(response, (dict, Mapping)) else None
    if not isinstance(usage, (dict, Mapping)):
        return usage_in_answer(response) if isinstance(response, (dict, Mapping)) else None
    prompt, output = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if prompt.__class__ is int and output.__class__ is int and prompt >= 0 and output >= 0 and not _CACHE_FIELDS & usage.keys():
        return prompt, output  # OpenAI's chat and completions: what the general reading below gives, at a glance
    prompt = _count(usage, "prompt_tokens", "input_tokens")
    output = _count(usage, "completion_tokens", "output_tokens")
    total = _count(usage, "total_tokens")
    if prompt is None and output is None and total is None:
        return None
    # Anthropic counts cached prompt tokens apart from input_tokens; they are priced here as uncached ones.
    prompt = (prompt or 0) + (_count(usage, "cache_creation_input_tokens") or 0) + (_count(usage, "cache_read_input_tokens") or 0)
    if output is None:
        output = max(0, (total or 0) - prompt)
    return prompt, output


_CACHE_FIELDS = frozenset(("cache_creation_input_tokens", "cache_read_input_tokens"))


def _count(usage: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        value = usage.get(name)
        if value.__class__ is int and value >= 0:
            return int(value)
    return None


@dataclass(slots=True)
class _Tally:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ModelCost:
    """One model's share: its requests, tokens, and dollars (None when no price is known for it)."""

    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    dollars: float | None
    price: Price | None


@dataclass(frozen=True, slots=True)
class CostReport:
    """Dollars per model and in total. `total` covers the priced models; `unpriced` names the others."""

    by_model: tuple[ModelCost, ...] = ()

    @property
    def total(self) -> float:
        return sum(cost.dollars for cost in self.by_model if cost.dollars is not None)

    @property
    def unpriced(self) -> tuple[str, ...]:
        return tuple(cost.model for cost in self.by_model if cost.dollars is None)

    @property
    def requests(self) -> int:
        return sum(cost.requests for cost in self.by_model)

    def record(self) -> dict[str, Any]:
        """As data, for --summary_json: dollars rounded to a millionth of a dollar; null where no price is known."""
        return {
            # The priced models' dollars; null when there were requests and none of them had a price.
            "usd": None if self.by_model and len(self.unpriced) == len(self.by_model) else round(self.total, 6),
            "by_model": {
                cost.model: {
                    "requests": cost.requests,
                    "input_tokens": cost.input_tokens,
                    "output_tokens": cost.output_tokens,
                    "usd": None if cost.dollars is None else round(cost.dollars, 6),
                    "usd_per_mtok": None if cost.price is None else {"input": cost.price.input_per_mtok, "output": cost.price.output_per_mtok},
                    "price_source": None if cost.price is None else cost.price.source,
                }
                for cost in self.by_model
            },
            "models_without_price": list(self.unpriced),
        }


@dataclass(slots=True)
class CostLedger:
    """Tokens counted per model (requests, input, output), priced when asked: the estimate or the spend of a run."""

    #: Per (model, Flex or not): Flex requests are priced apart.
    _by_model: dict[tuple[str, bool], _Tally] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self._by_model)

    def add(self, model: str | None, input_tokens: int, output_tokens: int, *, flex: bool = False) -> None:
        key = (model or UNKNOWN_MODEL, flex)
        tally = self._by_model.get(key)
        if tally is None:
            tally = self._by_model[key] = _Tally()
        tally.requests += 1
        tally.input_tokens += input_tokens
        tally.output_tokens += output_tokens

    def priced(self, prices: PriceBook) -> CostReport:
        costs = []
        for (model, flex), tally in sorted(self._by_model.items(), key=lambda item: -item[1].requests):
            price = prices.price(None if model == UNKNOWN_MODEL else model, flex=flex)
            dollars = price.dollars(tally.input_tokens, tally.output_tokens) if price is not None else None
            name = prices.url_model or model if model == UNKNOWN_MODEL else model  # bodies without a model: the URL's
            name = name + FLEX_SUFFIX if flex else name
            costs.append(ModelCost(name, tally.requests, tally.input_tokens, tally.output_tokens, dollars, price))
        return CostReport(tuple(costs))


def format_dollars(value: float) -> str:
    """$12.35 from a dollar up; three significant figures below ($0.0150, $0.000421): small jobs are priced too."""
    if value >= 1 or value <= 0:
        return f"${max(value, 0.0):,.2f}"
    if value < 1e-7:
        return "under $0.0000001"
    return f"${value:.{2 - math.floor(math.log10(value))}f}"
