"""nginx for the tests: skipped, with the reason, only when no nginx binary exists. CI installs it and sets
RLP_REQUIRE_NGINX=1, which turns that skip into a failure."""

from __future__ import annotations

import os

import pytest

from rate_limited_processor.mock_server.nginx import nginx_binary, nginx_gateway

__all__ = ["require_nginx", "nginx_gateway"]

REQUIRE_VARIABLE = "RLP_REQUIRE_NGINX"


def require_nginx() -> None:
    if nginx_binary() is None:
        message = "no nginx binary (install Debian's nginx package)"
        if os.environ.get(REQUIRE_VARIABLE) == "1":
            pytest.fail(f"{message}, but {REQUIRE_VARIABLE}=1 requires the nginx tests to run")
        pytest.skip(message)
