"""Test-wide settings: no key leaks in from the developer's shell, and the end-to-end marker."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: long end-to-end tests (several processes, nginx, a browser); run by `make test-e2e`")


@pytest.fixture(autouse=True)
def no_api_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings read $OPENAI_API_KEY by default: a developer's real key must not reach a test's mock."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
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
