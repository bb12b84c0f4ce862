"""Test-wide settings: no key leaks in from the developer's shell, the end-to-end marker, and no command left
running by a test that failed or timed out."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: long end-to-end tests (several processes, nginx, a browser); run by `make test-e2e`")


@pytest.fixture(autouse=True)
def no_api_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings read $OPENAI_API_KEY by default: a developer's real key must not reach a test's mock."""
    for variable in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AZURE_OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    yield


@pytest.fixture(autouse=True)
def restore_the_package_logger() -> Iterator[None]:
    """`cli.main` sets up the package's logger (level, handler, no propagation): undo it after each test."""
    logger = logging.getLogger("rate_limited_processor")
    state = (logger.level, list(logger.handlers), logger.propagate)
    yield
    logger.setLevel(state[0])
    logger.handlers[:] = state[1]
    logger.propagate = state[2]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_FAILED] = True
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def no_command_outlives_a_failed_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that fails or times out while a command it started still runs (a hang, say) would leave that
    process spinning past the test run: kill it, and say which it was."""
    yield
    if not request.node.stash.get(_FAILED, False):
        return
    for pid in _commands_started_by(os.getpid()):
        logging.getLogger(__name__).warning("killing command %d, still running after %s failed", pid, request.node.nodeid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _commands_started_by(parent: int) -> list[int]:
    """Child processes of `parent` that run the command (`python -m rate_limited_processor`), not the mock."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and any(argv[i] == b"-m" and argv[i + 1] == b"rate_limited_processor" for i in range(len(argv) - 1)):
            found.append(int(entry.name))
    return found
