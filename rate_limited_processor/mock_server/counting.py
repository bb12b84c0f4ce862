"""What a request costs against the TPM limit, counted by the project's own estimator.

Two modes, because the two sides of a real run count differently: "tiktoken" counts as the client's
estimator does; "chars" counts characters / 4 plus the completion budget, as OpenAI's limiter does. A run
that paces itself by tiktoken against a "chars" server shows how the difference plays out.

The estimator module is imported on first use, so the mock imports (and serves unlimited-TPM runs) without
tiktoken loaded, and the estimator is built once per server: it caches its tokenizers, which are far too
slow to load per request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..providers.endpoints import Endpoint
from .config import TokenCounting

__all__ = ["TokenCounter", "CountingError"]

CountFunction = Callable[[Endpoint, Mapping[str, Any]], int]


class CountingError(ValueError):
    """The estimator could not read the request (the mock answers 400, as the API would)."""


class TokenCounter:
    """Counts a request's tokens in the configured mode, with one estimator built on first use and reused."""

    __slots__ = ("mode", "encoding_name", "_count", "_estimation_error")

    #: "tiktoken" or "chars".
    mode: TokenCounting
    #: Passed to `TokenEstimator`; None lets it pick the encoding from each request's model.
    encoding_name: str | None

    def __init__(self, mode: TokenCounting = "tiktoken", encoding_name: str | None = None) -> None:
        self.mode = mode
        self.encoding_name = encoding_name
        self._count: CountFunction | None = None
        self._estimation_error: type[Exception] = ValueError

    def __repr__(self) -> str:
        return f"TokenCounter(mode={self.mode!r}, encoding_name={self.encoding_name!r})"

    def _load(self) -> CountFunction:
        """The counting function for the mode, bound once (a tokenizer is loaded here, not per request)."""
        from ..providers import token_estimation  # lazily: see the module docstring

        self._estimation_error = token_estimation.EstimationError
        if self.mode == "chars":
            self._count = token_estimation.estimate_from_characters
        else:
            self._count = token_estimation.TokenEstimator(self.encoding_name).estimate
        return self._count

    def count(self, endpoint: Endpoint, body: Mapping[str, Any]) -> int:
        """Tokens `body` is charged against TPM: prompt plus completion budget."""
        count = self._count if self._count is not None else self._load()
        try:
            return int(count(endpoint, body))
        except self._estimation_error as error:
            raise CountingError(str(error)) from error
