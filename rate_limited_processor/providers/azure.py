"""Azure OpenAI: OpenAI's API on Azure's hosts, with its own ways.

Its URLs name a deployment (`https://x.openai.azure.com/openai/deployments/{name}/chat/completions?api-version=...`)
and the key goes in an `api-key` header rather than `Authorization: Bearer`, read from $AZURE_OPENAI_API_KEY (as
Microsoft's own clients read it), else $OPENAI_API_KEY. Its rate-limit headers are OpenAI's, with resets in bare
seconds (`openai.parse_rate_limits` reads both); its errors say "Please retry after 6 seconds", and its API Management gateway "Try again in 20 seconds"; its
429 for tokens says "token rate limit"; a daily quota may ask for a wait of a day ("retry after 86400 seconds"),
which stops the run (`RetryPolicy.max_server_wait`). Requests without a "model" (a deployment names it) are
counted with the default encoding and priced as "(no model)".

Its Batch API (Global Batch, `--mode batch` with a deployment URL) is OpenAI's Files and Batches under the
resource's /openai (`/openai/files`, `/openai/batches`, each call with the URL's `?api-version=`), its endpoints
named without /v1 ("/chat/completions", in the batch and in each line's `url`), and each line's body naming
the Global Batch deployment as its `model` (a line naming none is sent with the URL's deployment). Its v1 API
(`/openai/v1/...`) is OpenAI's shape, and is left to OpenAI's way.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

from . import openai
from .provider import BatchPlace, ErrorDialect, Provider

__all__ = ["PROVIDER", "serves", "is_azure_url", "auth_headers", "deployment_of", "batch_place"]

#: Its hosts: each resource has its own name under one of these.
HOST_SUFFIXES = (".openai.azure.com", ".cognitiveservices.azure.com")


def serves(url: str) -> bool:
    """Azure's hosts, or any URL with its deployment path (a gateway in front of it)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return host.endswith(HOST_SUFFIXES) or "/openai/deployments/" in parts.path


#: The name earlier releases had (`endpoints.is_azure_url`).
is_azure_url = serves


def auth_headers(key: str | None) -> dict[str, str]:
    return {"api-key": key} if key is not None else {}


_DEPLOYMENTS = "/openai/deployments/"


def deployment_of(url: str) -> str | None:
    """The deployment a URL names (".../openai/deployments/{name}/..."), if it names one."""
    path = urlsplit(url).path
    if _DEPLOYMENTS not in path:
        return None
    name = path.split(_DEPLOYMENTS, 1)[1].split("/", 1)[0]
    return name or None


def batch_place(url: str) -> BatchPlace | None:
    """Its Batch API for a deployment URL: under the resource's /openai, with the URL's api-version; None for
    any other URL (the v1 API: OpenAI's way)."""
    parts = urlsplit(url)
    deployment = deployment_of(url)
    if deployment is None:
        return None
    prefix = parts.path.split(_DEPLOYMENTS, 1)[0]
    version = [(name, value) for name, value in parse_qsl(parts.query) if name == "api-version"]
    return BatchPlace(
        root=f"{parts.scheme}://{parts.netloc}{prefix}/openai", query=urlencode(version), endpoint=_batch_endpoint, model=deployment,
    )


def _batch_endpoint(endpoint: str) -> str:
    return endpoint.removeprefix("/v1")


#: Where the key is read from: Microsoft's clients' variable, then OpenAI's (which earlier releases read alone).
API_KEY_VARIABLES = ("AZURE_OPENAI_API_KEY", openai.API_KEY_VARIABLE)

ERRORS = ErrorDialect(token_limit_words=("token rate limit",), wait_words=("retry after",))

PROVIDER = Provider(
    name="Azure OpenAI",
    serves=serves,
    key_variable=API_KEY_VARIABLES[0],
    more_key_variables=API_KEY_VARIABLES[1:],
    auth_headers=auth_headers,
    own_hosts=HOST_SUFFIXES,
    parse_rate_limits=openai.parse_rate_limits,
    rate_limit_headers=openai.PROVIDER.rate_limit_headers,
    limit_floors=openai.PROVIDER.limit_floors,
    errors=ERRORS,
    batch_place=batch_place,
)
