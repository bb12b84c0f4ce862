"""The checks the command makes before sending anything: the URL, the input file, the output paths.

Each failure is a `UsageError` that names the real mistake and what to do about it, because the newcomer's
usual mistakes (a URL one letter off, the cookbook's embeddings URL left as the default for a chat file, a
pretty-printed JSON file, a directory) would otherwise surface as a puzzle about some other flag. Nothing
here creates a file: a run refused with exit code 2 leaves the disk as it found it.
"""

from __future__ import annotations

import difflib
import itertools
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..base.errors import UsageError
from ..base.models import APIRequest, RejectedLine
from ..config.settings import DEFAULT_REQUEST_URL, key_variable_for
from ..files.request_io import read_requests
from ..providers.endpoints import Endpoint, endpoint_from_url, missing_field_reason, resolve_url
from ..providers.registry import EXAMPLE_REQUEST_URL, KEY_HEADERS, needs_a_key

__all__ = [
    "INPUT_CHECK_LINES",
    "check_request_url",
    "check_key_for_provider",
    "check_input",
    "check_readable",
    "check_writable",
    "first_model",
    "nearest_endpoint_url",
]

#: How many lines are checked before sending: if none of them is usable, the file is refused whole.
INPUT_CHECK_LINES = 100
#: How alike a URL's last path segments must be to an endpoint's path to be taken for a typo of it.
_TYPO_SIMILARITY = 0.8
#: How much of the input's start is looked at to tell what the file is, when it is not JSON Lines.
_SNIFF_BYTES = 64 * 1024
_SCHEMES = ("http", "https")
_JSONL_EXAMPLE = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}'


def check_request_url(url: str) -> None:
    """Refuse a URL that could never be sent (no scheme, a wrong one, no host) or that is one typo from an endpoint.

    A URL that names no endpoint at all is left to `check_input`: it is fine as an API root for Batch input.
    """
    parts = urlsplit(url)
    if "://" not in url:
        guess = f"{'http' if _looks_local(url) else 'https'}://{url}"
        raise UsageError(f"--request_url: {url!r} has no scheme; did you mean {guess}?")
    scheme = url.split("://", 1)[0]
    if scheme.lower() not in _SCHEMES:
        nearest = difflib.get_close_matches(scheme.lower(), _SCHEMES, n=1, cutoff=0.0)[0]
        raise UsageError(f"--request_url: the scheme must be http or https, not {scheme!r}; did you mean {nearest}://{url.split('://', 1)[1]}?")
    if not parts.hostname:
        raise UsageError(f"--request_url: {url!r} names no host, as in {EXAMPLE_REQUEST_URL}")
    try:
        endpoint_from_url(url)
    except ValueError:
        suggestion = nearest_endpoint_url(url)
        if suggestion is not None:
            raise UsageError(f"--request_url: {parts.path!r} is not an endpoint this tool knows; did you mean {suggestion}?") from None


def check_key_for_provider(url: str, *, has_key: bool, headers: Mapping[str, str] | None = None) -> None:
    """Refuse to start without a key when the URL is a provider's own API, naming the variable to set.

    Such an API refuses every keyless request (401), so the run would only connect to be told so. A local or
    self-hosted server (vLLM, a gateway, the mock) may want no key, and is left alone.
    """
    if has_key or any(name.lower() in KEY_HEADERS for name in headers or {}):  # a key given with --header counts
        return
    if not needs_a_key(url):  # a provider's own host answers every request without a key with 401
        return
    host = (urlsplit(url).hostname or "").lower()
    variable = key_variable_for(url)
    raise UsageError(
        f"no API key for {host}: set ${variable} (export {variable}=...), or give --api_key; nothing was sent"
    )


def _looks_local(url: str) -> bool:
    host = url.split("/", 1)[0].split(":", 1)[0]
    return host in ("localhost", "0.0.0.0") or host.startswith("127.") or host.startswith("192.168.") or host.startswith("10.")


def nearest_endpoint_url(url: str) -> str | None:
    """The URL with its endpoint part corrected, when its path ends in what looks like a typo of one.

    >>> nearest_endpoint_url("http://127.0.0.1:8000/v1/chat/completion")
    'http://127.0.0.1:8000/v1/chat/completions'
    >>> nearest_endpoint_url("https://api.openai.com/v1") is None    # an API root, not a typo
    True
    """
    parts = urlsplit(url)
    segments = [segment for segment in parts.path.split("/") if segment]
    best: tuple[float, int, Endpoint] | None = None
    for endpoint in Endpoint:
        for count in (1, 2):
            if len(segments) < count:
                continue
            tail = "/".join(segments[-count:]).lower()
            score = difflib.SequenceMatcher(None, tail, endpoint.value).ratio()
            if best is None or score > best[0]:
                best = (score, count, endpoint)
    if best is not None and best[0] >= _TYPO_SIMILARITY:
        _, count, endpoint = best
        path = "/".join(["", *segments[:-count], endpoint.value])
    elif segments and any(endpoint.value.startswith(segments[-1].lower() + "/") for endpoint in Endpoint):
        path = "/".join(["", *segments[:-1], Endpoint.CHAT_COMPLETIONS.value])  # ".../v1/chat"
    else:
        return None
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def check_readable(requests_path: Path) -> None:
    if requests_path.is_dir():
        inside = sorted(path.name for path in requests_path.glob("*.jsonl"))[:3]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise UsageError(f"--requests_filepath: {requests_path} is a directory; give the JSONL file itself{hint}")
    if not requests_path.exists():
        raise UsageError(f"--requests_filepath: no such file: {requests_path}")
    if not requests_path.is_file():
        raise UsageError(f"--requests_filepath: {requests_path} is not a regular file (the input is read more than once: save it to a file first)")
    try:
        with open(requests_path, "rb") as file:
            file.read(1)
    except OSError as error:
        raise UsageError(f"--requests_filepath: cannot read {requests_path}: {error.strerror}") from None


def check_writable(path: Path, flag: str) -> None:
    """Fail if `path` could not be appended to, without creating it (a refused run leaves no empty file)."""
    if path.is_dir():
        raise UsageError(f"{flag}: {path} is a directory; give a file path, such as {path / 'results.jsonl'}")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise UsageError(f"{flag}: cannot write {path}: permission denied")
        return
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"{flag}: cannot write {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: cannot write {path}: the directory {parent} is not writable")


def check_input(requests_path: Path, request_url: str, *, url_given: bool = True) -> None:
    """Fail before sending if the file holds no requests, or none of its first lines is usable.

    `url_given` is False when --request_url was left at its default (the cookbook's embeddings URL), so the
    message can say so when the lines are for another endpoint.
    """
    first: tuple[APIRequest | RejectedLine, str] | None = None
    checked = 0
    for item in itertools.islice(read_requests(requests_path), INPUT_CHECK_LINES):
        checked += 1
        problem = item.reason if isinstance(item, RejectedLine) else _problem_with(item, request_url)
        if problem is None:
            return
        if first is None:
            first = (item, problem)
    if first is None:
        raise UsageError(f"--requests_filepath: {requests_path} holds no requests (it is empty or blank)")
    item, problem = first
    none_usable = _none_usable(checked, whole_file=checked < INPUT_CHECK_LINES)
    if isinstance(item, RejectedLine):
        raise UsageError(_not_json_lines(requests_path, item, none_usable))
    raise UsageError(_not_for_this_endpoint(item, problem, request_url, url_given, none_usable))


def _problem_with(request: APIRequest, request_url: str) -> str | None:
    try:
        endpoint = endpoint_from_url(resolve_url(request_url, request.url))
    except ValueError as error:  # UnsupportedEndpoint, or a malformed or foreign url
        where = "--request_url" if request.url is None else f"line {request.index}'s url"
        return f"{where}: {error}"
    return missing_field_reason(endpoint, request.body)


def _none_usable(checked: int, *, whole_file: bool) -> str:
    if checked == 1 and whole_file:
        return "its only line is not a usable request"
    if whole_file:
        return f"none of its {checked:,} lines is a usable request"
    return f"none of the first {checked:,} lines is a usable request"


def _not_for_this_endpoint(item: APIRequest, problem: str, request_url: str, url_given: bool, none_usable: str) -> str:
    """Lines that parse but do not fit the URL: blame the URL when it is the URL that is wrong."""
    if item.url is None:
        try:
            endpoint = endpoint_from_url(request_url)
        except ValueError as error:
            return f"--request_url: {error} (only Batch input, whose lines carry their own url, may give just the API root)"
        looks_like = _endpoint_of_body(item.body)
        if looks_like is not None and looks_like is not endpoint:
            suggestion = resolve_url(request_url, "/" + looks_like.value)
            field = looks_like.required_field
            if not url_given:
                return (
                    f"--request_url was not given, so requests go to the cookbook's default, the embeddings endpoint "
                    f"({DEFAULT_REQUEST_URL}); but {item.name} has {field!r}, as /{looks_like.value} requests do: "
                    f"give --request_url {suggestion}"
                )
            return (
                f"--request_url names /{endpoint.value}, which needs {endpoint.required_field!r}, but {item.name} has {field!r}, "
                f"as /{looks_like.value} requests do: is --request_url right? (did you mean {suggestion}?)"
            )
    return f"--requests_filepath: {none_usable} for this endpoint; the first problem: {problem}"


def _endpoint_of_body(body: dict[str, Any]) -> Endpoint | None:
    """Which endpoint a body seems written for, judged by the field each endpoint requires."""
    if "messages" in body:
        return Endpoint.CHAT_COMPLETIONS
    if "prompt" in body:
        return Endpoint.COMPLETIONS
    if "input" in body:
        model = body.get("model")
        return Endpoint.EMBEDDINGS if isinstance(model, str) and "embed" in model else Endpoint.RESPONSES
    return None


def _not_json_lines(requests_path: Path, item: RejectedLine, none_usable: str) -> str:
    """Lines that are not request objects: say what the file looks like instead, and how to convert it."""
    start = _start_of(requests_path)
    source = shlex.quote(str(requests_path))
    target = shlex.quote(str(requests_path.with_suffix(".jsonl")) if requests_path.suffix != ".jsonl" else f"{requests_path.stem}.fixed.jsonl")
    must = "the input must be JSON Lines: one request object per line"
    # The file's shape explains a line that does not parse, or is not an object; not one built to break the
    # parser (too deep, too long a number), which is reported as itself.
    if "not valid JSON (" not in item.reason and "expected a JSON object" not in item.reason:
        return f"--requests_filepath: {none_usable}: {must}, such as {_JSONL_EXAMPLE}; the first problem: {item.reason}"
    if start.startswith("["):
        return f"--requests_filepath: {requests_path} holds a JSON array, but {must}; convert it with: jq -c '.[]' {source} > {target}"
    if start.startswith("{"):
        return (
            f"--requests_filepath: {requests_path} holds JSON spread over several lines (pretty-printed?), but {must}; "
            f"convert it with: jq -c . {source} > {target}"
        )
    first_line = start.split("\n", 1)[0].strip()
    if any(separator in first_line for separator in (",", "\t", ";")) and not first_line.startswith('"'):
        shown = first_line if len(first_line) <= 60 else first_line[:60] + "…"
        return (
            f"--requests_filepath: {requests_path} looks like CSV (its first line is {shown!r}), but {must}, "
            f"each holding the API body, such as {_JSONL_EXAMPLE}"
        )
    return f"--requests_filepath: {none_usable}: {must}, such as {_JSONL_EXAMPLE}; the first problem: {item.reason}"


def _start_of(path: Path) -> str:
    with open(path, "rb") as file:
        head = file.read(_SNIFF_BYTES)
    return head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")


def first_model(requests_path: Path) -> str | None:
    """The model the file's first requests name, if any (for the shared-limit key and --show_limits)."""
    for item in itertools.islice(read_requests(requests_path), INPUT_CHECK_LINES):
        model = item.body.get("model") if isinstance(item, APIRequest) else None
        if isinstance(model, str):
            return model
    return None
