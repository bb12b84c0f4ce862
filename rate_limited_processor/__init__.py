"""rate_limited_processor: push large batches of OpenAI(-compatible) API requests through as fast as the
account's rate limits allow, and no faster.

From Python::

    from rate_limited_processor import Settings, process_requests

    settings = Settings(request_url="https://api.openai.com/v1/embeddings", api_key=os.environ["OPENAI_API_KEY"])
    async for result in process_requests(({"model": "text-embedding-3-small", "input": t} for t in texts), settings):
        ...

From the shell: `python -m rate_limited_processor --help`.
"""

from .config import Secret, Settings
from .dispatcher import Processor, RunStopped, process_requests
from .endpoints import Endpoint, UnsupportedEndpoint
from .job import run_file_job
from .limiter import UNLIMITED, InProcessLimiter, Limits, RateLimiter
from .models import APIRequest, RejectedLine, RequestResult
from .retry_policy import RetryPolicy
from .status import RunStats, format_summary
from .token_estimation import TokenEstimator

__all__ = [
    "UNLIMITED",
    "APIRequest",
    "Endpoint",
    "InProcessLimiter",
    "Limits",
    "Processor",
    "RateLimiter",
    "RejectedLine",
    "RequestResult",
    "RetryPolicy",
    "RunStats",
    "RunStopped",
    "Secret",
    "Settings",
    "TokenEstimator",
    "UnsupportedEndpoint",
    "format_summary",
    "process_requests",
    "run_file_job",
]

__version__ = "0.1.0"
