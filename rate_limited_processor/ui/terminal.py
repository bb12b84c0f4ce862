"""A terminal that goes away ends what the run prints, never the run.

After SIGHUP (a closed terminal or ssh session) the run still finishes the requests in flight and writes their
rows; but every write to the terminal now fails (EIO), as does one to a pipe whose reader died with the session
(`... 2>&1 | tee log`: EPIPE). A progress bar or a log line failing there must not abort the run and lose the
answers it is waiting for, nor a summary line end it with a traceback. `HangupProofStream` stands in for
`sys.stderr`: the first such failure points the stream's descriptor at /dev/null, and the run goes on silently
(`--summary_json` still says how it ended).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["HangupProofStream", "hangup_proof_stderr"]

#: What a write to a terminal or a pipe that went away fails with.
_GONE = frozenset({errno.EIO, errno.EPIPE, errno.ENXIO, errno.ECONNRESET})


class HangupProofStream:
    """A text stream whose writes, once its terminal or pipe is gone, go nowhere instead of failing."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._stream.write(text)
            except OSError as error:
                self._lost(error)
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except OSError as error:
                self._lost(error)

    def _lost(self, error: OSError) -> None:
        if error.errno not in _GONE:
            raise error
        self.gone = True
        # What the stream still buffers, and anything writing to its descriptor directly, goes to /dev/null now.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def hangup_proof_stderr() -> Iterator[None]:
    """`sys.stderr` hangup-proof for the block."""
    original = sys.stderr
    if isinstance(original, HangupProofStream) or original is None:
        yield
        return
    sys.stderr = HangupProofStream(original)
    try:
        yield
    finally:
        sys.stderr = original
