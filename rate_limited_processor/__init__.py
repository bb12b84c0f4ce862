"""rate_limited_processor: push large batches of OpenAI(-compatible) API requests through as fast as the
account's rate limits allow, and no faster.

From Python::

    from rate_limited_processor import Settings, process_requests_sync

    settings = Settings(request_url="https://api.openai.com/v1/embeddings")   # the key from $OPENAI_API_KEY
    for result in process_requests_sync(({"model": "text-embedding-3-small", "input": t} for t in texts), settings):
        ...

`process_requests` is the same as an async generator, and `Processor(settings).run(requests)` the same
as an async context manager that also exposes the run's `stats`. From the shell:
`python -m rate_limited_processor --help`.
"""

from . import _moved
from .base.clock import LOOP_CLOCK, Clock
from .base.errors import (
    EstimationError,
    InvalidRequest,
    LimiterUnavailable,
    NoAnswer,
    ProcessorError,
    ResumeError,
    RunStopped,
    TransportError,
    UnsupportedEndpoint,
    UsageError,
)
from .base.models import APIRequest, AttemptTiming, RejectedLine, RequestResult, RequestTimings, ResultKind
from .config.settings import FROM_ENVIRONMENT, Account, Secret, Settings, read_accounts
from .core.limiter import UNLIMITED, InProcessLimiter, Limits, RateLimiter
from .core.retry_policy import RetryPolicy
from .core.stats import RunStats
from .engine.processor import Processor, Results, process_requests, process_requests_sync
from .jobs.file_job import run_file_job
from .providers.endpoints import Endpoint
from .providers.token_estimation import TokenEstimator
from .transport.http import AiohttpTransport, FunctionTransport, StreamingResponse, Transport, TransportRequest, TransportResponse, json_response
from .ui.report import RunReport
from .ui.summary import format_summary

_moved.install()  # `rate_limited_processor.limiter` and the other paths of earlier releases still import

__all__ = [
    "FROM_ENVIRONMENT",
    "Account",
    "LOOP_CLOCK",
    "UNLIMITED",
    "APIRequest",
    "AttemptTiming",
    "AiohttpTransport",
    "Clock",
    "Endpoint",
    "EstimationError",
    "FunctionTransport",
    "InProcessLimiter",
    "InvalidRequest",
    "LimiterUnavailable",
    "Limits",
    "NoAnswer",
    "Processor",
    "ProcessorError",
    "RateLimiter",
    "RejectedLine",
    "RequestResult",
    "RequestTimings",
    "Results",
    "ResultKind",
    "ResumeError",
    "RetryPolicy",
    "RunReport",
    "RunStats",
    "RunStopped",
    "Secret",
    "Settings",
    "StreamingResponse",
    "TokenEstimator",
    "Transport",
    "TransportError",
    "TransportRequest",
    "TransportResponse",
    "UnsupportedEndpoint",
    "UsageError",
    "format_summary",
    "json_response",
    "process_requests",
    "process_requests_sync",
    "read_accounts",
    "run_file_job",
]

__version__ = "0.1.0"
