"""The transport seam: send one request, get bytes and headers back (`http`), and reassemble a stream
(`streaming`). The names of `http` are re-exported here, where earlier releases had them
(`rate_limited_processor.transport`)."""

from .http import (
    AiohttpTransport,
    FunctionTransport,
    ReceiveTimings,
    SendFunction,
    StreamingResponse,
    Transport,
    TransportRequest,
    TransportResponse,
    as_transport,
    json_response,
    outcome_of,
    outcome_of_error,
    receive,
)

__all__ = [
    "TransportRequest",
    "TransportResponse",
    "ReceiveTimings",
    "StreamingResponse",
    "receive",
    "Transport",
    "SendFunction",
    "AiohttpTransport",
    "FunctionTransport",
    "as_transport",
    "outcome_of",
    "outcome_of_error",
    "json_response",
]
