"""The results file a run writes: checked before anything is sent, and held for the whole run.

`check_output_path`: never the input under another name, always a regular file, no sidecar that is another of
the run's files. `OutputLock`: an exclusive lock on `<results>.lock`, so two runs never write, and pay for, the
same file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from ..base.errors import UsageError
from .resume import sidecar_path
from .side_files import JOB_SIDECARS, check_apart, job_files, named

__all__ = ["OutputLock", "check_output_path", "try_lock"]

logger = logging.getLogger("rate_limited_processor")


def check_output_path(requests_path: str | Path, save_path: str | Path, *, sidecars: Iterable[str] = JOB_SIDECARS) -> None:
    """Refuse, before anything is read or sent, an output the run must never write to: the input itself
    under any name (the same device and inode, so a hard link or a symlink counts), or anything but a
    regular file (a FIFO would block, a device cannot be read back to resume). Nor may a sidecar the run writes
    beside the results (`sidecars`: the lock, the index, ...) be the input or the results (`side_files`)."""
    _check_output_file(requests_path, save_path)
    check_apart(job_files(requests_path, save_path, sidecars=sidecars))


def _check_output_file(requests_path: str | Path, save_path: str | Path) -> None:
    save = Path(save_path)
    try:
        output = save.stat()
    except FileNotFoundError:
        return  # a new file (or a symlink to one): created by the writer
    except OSError as error:
        raise UsageError(f"cannot use {save} as the output: {error.strerror}") from None
    if stat.S_ISDIR(output.st_mode):
        raise UsageError(f"{save} is a directory; give the path of a results file (it is created if missing)")
    if not stat.S_ISREG(output.st_mode):
        raise UsageError(f"{save} is not a regular file; the output must be one (it is read back to resume)")
    try:
        given = Path(requests_path).stat()
    except OSError:
        return  # no input: reported where it is read
    if (output.st_dev, output.st_ino) == (given.st_dev, given.st_ino):
        raise UsageError(f"the output {save} is the same file as the input {requests_path} (a hard link or a symlink counts); results need a file of their own")


#: What the lock file holds: who holds the lock, for the message a second run prints.
_LOCK_LINE = "rate_limited_processor lock: pid {pid} on {host} since {since}\n"
_LOCK_LINE_RE = re.compile(r"rate_limited_processor lock: pid (\d+) on (\S+) since (\S+)\n?")


class OutputLock:
    """One run at a time per results file, for the whole run: a second run exits before sending anything.

    Two non-blocking `flock`s. One on the sidecar `<results>.lock`, which says who holds it ("pid 4242 on
    host build-7") and is removed at the end. One on the results file itself, so a second name for the same
    file (a hard link) is caught too. A lock file with anything else in it is not ours: refused, untouched.
    """

    __slots__ = ("path", "lock_path", "_sidecar", "_results", "_results_id")

    def __init__(self, save_path: str | Path) -> None:
        self.path = Path(save_path)
        self.lock_path = sidecar_path(save_path, "lock")
        self._sidecar: int | None = None
        self._results: int | None = None
        self._results_id: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"OutputLock({str(self.lock_path)!r}, held={self._sidecar is not None})"

    def __enter__(self) -> OutputLock:
        self._sidecar = self._lock_sidecar()
        try:
            self.follow()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def follow(self) -> None:
        """Lock the results file as its path names it now (again after a rewrite replaced it)."""
        try:
            fd = self._open_results()
        except OSError as error:
            raise UsageError(f"cannot write {self.path}: {error.strerror}") from None
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) == self._results_id:
            os.close(fd)
            return
        if not try_lock(fd, self.path):
            os.close(fd)
            raise UsageError(
                f"{self.path} is being written by another run under another name (a hard link to it?); "
                "wait for that run to finish, or give this one another output file"
            )
        if self._results is not None:
            os.close(self._results)
        self._results, self._results_id = fd, (info.st_dev, info.st_ino)

    def _open_results(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def release(self) -> None:
        if self._sidecar is not None:
            with contextlib.suppress(OSError):
                if _same_file(self._sidecar, self.lock_path):
                    os.unlink(self.lock_path)  # before unlocking: whoever locks next finds the path gone and makes a new one
            os.close(self._sidecar)
            self._sidecar = None
        if self._results is not None:
            os.close(self._results)
            self._results = self._results_id = None

    def _lock_sidecar(self) -> int:
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as error:
                raise UsageError(f"cannot create the lock file {self.lock_path}: {error.strerror}") from None
            try:
                if not try_lock(fd, self.lock_path):
                    raise UsageError(f"{self.path} is in use by another run ({_holder(fd)}); wait for it to finish, or stop it")
                if _same_file(fd, self.lock_path):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the holder removed it between our open and our lock: lock the one there now
        held_by = os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
        if held_by and _LOCK_LINE_RE.fullmatch(held_by) is None:
            os.close(fd)
            raise UsageError(f"{self.lock_path} exists and is not a lock file of this tool; it is left untouched (move it aside if it is not needed)")
        line = _LOCK_LINE.format(pid=os.getpid(), host=socket.gethostname() or "?", since=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, line.encode(), 0)
        except OSError as error:  # a full disk: said with the lock file's name, not as a bug
            os.close(fd)
            raise named(error, self.lock_path) from None
        return fd


def try_lock(fd: int, path: Path) -> bool:
    """Take an exclusive flock without waiting: False when someone else holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        logger.warning("%s: cannot be locked on this file system (%s); a second run on the same output would not be stopped", path, error.strerror)
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _holder(fd: int) -> str:
    match = _LOCK_LINE_RE.fullmatch(os.pread(fd, 4096, 0).decode("utf-8", errors="replace"))
    if match is None:
        return "it is starting, or is not this tool"
    return f"pid {match[1]} on host {match[2]}, since {match[3]}"
