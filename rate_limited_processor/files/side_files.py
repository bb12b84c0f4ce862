"""Every file a run touches is a file of its own: none it writes is one it reads or writes for another purpose.

A summary pointed at the results file would replace the paid results; a report pointed at the input, the
input; a lock file that happens to be the accounts file, the accounts. So before anything is opened for
writing, each file the run will write (the results, their lock and resume index, the batch record, the
summary, the reports, the day's spend) is compared with every other file of the run (the input, the accounts file, ...), and a
run where two are one file is refused, writing nothing. Files are compared as the system knows them: an
existing file by its device and inode (so a hard link or a symlink is caught), one not yet made by its path
with every symlink resolved.

Usage::

    check_apart([RunFile("--requests_filepath", input_path), RunFile("--save_filepath", save_path, written=True)])
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..base.errors import UsageError
from .resume import sidecar_path

__all__ = ["RunFile", "check_apart", "job_files", "same_file_key", "named", "still_names"]

#: The sidecars every file job writes beside its results: `<results>.lock` and `<results>.index`, and
#: `<results>.day` with a daily limit (`day_file.py`).
JOB_SIDECARS = ("lock", "index", "day")


@dataclass(frozen=True, slots=True)
class RunFile:
    """A file of the run: how the user knows it (a flag, or what it is), where it is, and whether the run writes it."""

    role: str
    path: Path
    written: bool = False


def same_file_key(path: Path) -> tuple[object, ...]:
    """What makes two paths one file: the device and inode of an existing file, else the path with symlinks resolved."""
    try:
        info = os.stat(path)
    except OSError:  # not there yet (or unreadable): what it would be created as
        return ("path", os.path.realpath(path))
    return ("file", info.st_dev, info.st_ino)


def check_apart(files: Iterable[RunFile]) -> None:
    """Refuse, with a `UsageError` naming both, a file the run writes that is also another of its files."""
    seen: dict[tuple[object, ...], RunFile] = {}
    for file in files:
        key = same_file_key(file.path)
        other = seen.get(key)
        if other is None:
            seen[key] = file
            continue
        if file.written or other.written:
            written, kept = (file, other) if file.written else (other, file)
            raise UsageError(
                f"{written.role}: {written.path} is the same file as {kept.role}, {kept.path}; each file the run writes "
                "needs a path of its own (nothing was written)"
            )


def job_files(requests_path: str | Path, save_path: str | Path, *, sidecars: Iterable[str] = JOB_SIDECARS) -> list[RunFile]:
    """The files of a file job: the input it reads, the results it reads and appends to, and their sidecars."""
    files = [RunFile("the input (--requests_filepath)", Path(requests_path)), RunFile("--save_filepath", Path(save_path), written=True)]
    for kind in sidecars:
        path = sidecar_path(save_path, kind)
        files.append(RunFile(f"the {kind} file beside the results ({path.name})", path, written=True))
    return files


def named(error: OSError, path: str | Path) -> OSError:
    """`error` naming `path` when it names no file (a write through a descriptor): so the one line the command
    prints says which file, and why ("No space left on device")."""
    if error.filename is None:
        error.filename = str(path)
    return error


def still_names(path: str | Path, identity: tuple[int, int]) -> bool:
    """Whether `path` still names the file or directory whose (device, inode) is `identity`: log rotation renames,
    a cleanup deletes, and a writer holding the old one writes on where nobody will look."""
    try:
        named = os.stat(path)
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == identity
