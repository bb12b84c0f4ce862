"""Debian's nginx on loopback as a rate-limiting gateway nobody here wrote: `limit_req` in front of the mock.

It answers over-limit requests with its own HTML 429 page, no rate-limit headers and no hint, the way many
gateways do. Tests that need it are skipped, with the reason, only when no nginx binary exists; CI installs
it and sets RLP_REQUIRE_NGINX=1, which turns that skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.redis_server import free_port

REQUIRE_VARIABLE = "RLP_REQUIRE_NGINX"

CONFIG = """
worker_processes 1;
daemon off;
user root;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    # One bucket for every client (the key is constant): the account's limit, whoever sends.
    limit_req_zone $server_name zone=account:1m rate={rate}r/s;
    limit_req_status 429;
    upstream api {{ server {upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        server_name gateway;
        location / {{
            limit_req zone=account burst={burst} nodelay;
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def nginx_binary() -> str:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        message = "no nginx binary (install Debian's nginx package)"
        if os.environ.get(REQUIRE_VARIABLE) == "1":
            pytest.fail(f"{message}, but {REQUIRE_VARIABLE}=1 requires the nginx tests to run")
        pytest.skip(message)
    return binary


@contextmanager
def nginx_gateway(upstream: str, work: Path, *, rate: int, burst: int) -> Iterator[str]:
    """nginx limiting to `rate` requests a second (with `burst` allowed over), proxying to `upstream`
    ("host:port"). Yields its origin, e.g. "http://127.0.0.1:PORT"."""
    binary = nginx_binary()
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    config = work / "nginx.conf"
    config.write_text(CONFIG.format(work=work, rate=rate, burst=burst, upstream=upstream, port=port))
    process = subprocess.Popen([binary, "-c", str(config), "-p", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    origin = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:  # listening yet? (a connect, not a request: the upstream may share this thread's event loop)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = work / "error.log"
                    raise RuntimeError(f"nginx did not start: {log.read_text() if log.exists() else ''}") from None
                time.sleep(0.05)
        yield origin
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
