"""The mock behind nginx's `limit_req`: a rate-limiting gateway nobody here wrote, for tests, benchmarks and
rehearsal (Debian's `nginx` package; nothing of it is bundled).

Usage::

    async with MockServer() as upstream:
        with nginx_gateway(f"127.0.0.1:{upstream.port}", Path("/tmp/gw"), rate=10, burst=5) as origin:
            ...  # POST to f"{origin}/v1/chat/completions": over 10 requests a second, nginx answers 429

nginx answers over-limit requests with its own HTML 429 page: no x-ratelimit headers, no hint, as many
gateways do. `rate` is requests per second for every client together; `burst` is how many it lets through
above the rate at once (`limit_req ... burst=N nodelay`).
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

__all__ = ["nginx_binary", "nginx_gateway"]

_CONFIG = """
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


def nginx_binary() -> str | None:
    """Where nginx is installed, or None."""
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def nginx_gateway(upstream: str, work: Path, *, rate: int, burst: int) -> Iterator[str]:
    """nginx limiting to `rate` requests a second (and `burst` over it), proxying to `upstream` ("host:port").
    Yields its origin, e.g. "http://127.0.0.1:PORT"; stops it on the way out."""
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("no nginx binary (install Debian's nginx package)")
    port = _free_port()
    work.mkdir(parents=True, exist_ok=True)
    config = work / "nginx.conf"
    config.write_text(_CONFIG.format(work=work, rate=rate, burst=burst, upstream=upstream, port=port))
    process = subprocess.Popen([binary, "-c", str(config), "-p", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
