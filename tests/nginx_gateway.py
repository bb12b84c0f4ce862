"""nginx for the tests: skipped, with the reason, only when no nginx binary exists. CI installs it and sets
RLP_REQUIRE_NGINX=1, which turns that skip into a failure."""

from __future__ import annotations

from rate_limited_processor.mock_server.nginx import nginx_binary, nginx_gateway
from tests.helpers import require_program

__all__ = ["require_nginx", "nginx_gateway"]

REQUIRE_VARIABLE = "RLP_REQUIRE_NGINX"


def require_nginx() -> None:
    require_program(nginx_binary(), "nginx", REQUIRE_VARIABLE, "nginx")
