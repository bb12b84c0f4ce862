"""Numbers and counts in words, for the display, the summary and the messages of jobs."""

from __future__ import annotations

__all__ = ["format_duration", "plural"]


def format_duration(seconds: float) -> str:
    """1.5s, 12m05s, 3h04m10s."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def plural(count: int, one: str, many: str) -> str:
    return f"{count:,} {one if count == 1 else many}"
