"""Files only the gateway's own user may read, whatever the umask it was started with.

The ledger holds people's names, card hashes and the last digits of cards; its key file holds
the keys that make those hashes (and sign console cookies); a `--record` file holds card numbers
in clear; the site file holds password hashes. Such files are created 0600 and the directories
the gateway makes for them 0700: `open()` and SQLite would create them 0644 under the usual
umask, and 0666 minus nothing under umask 000.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TextIO

log = logging.getLogger(__name__)

OWNER_ONLY = 0o600


def make_private_dir(path: Path) -> None:
    """Create `path` and its missing parents 0700; directories that exist are left alone."""
    missing = []
    p = Path(path)
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)         # the umask may have taken the owner's bits too


def create_private(path: Path) -> bool:
    """Create `path` empty and 0600 unless it exists (True if it was created)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, OWNER_ONLY)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, OWNER_ONLY)
    finally:
        os.close(fd)
    return True


def tighten(path: Path) -> None:
    """Take group's and others' bits off a file of ours that an older gateway made readable."""
    try:
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
            os.chmod(path, mode & 0o700)
            log.warning("%s was readable by other users (mode %o): now %o", path, mode, mode & 0o700)
    except FileNotFoundError:
        pass
    except PermissionError:        # another user's file: say so, the gateway runs on
        log.warning("%s is readable by other users and not ours to change: chmod 600 it", path)


def open_private_append(path: Path) -> TextIO:
    """`path` opened for appending text, created 0600 (an existing one loses group/other bits)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, OWNER_ONLY)
    try:
        mode = os.fstat(fd).st_mode & 0o777
        if mode & 0o077:
            os.fchmod(fd, mode & 0o700)
        return os.fdopen(fd, "a", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def replace_file(path: Path, data: bytes, mode: int = OWNER_ONLY, owner: tuple[int, int] | None = None) -> None:
    """Write `path` atomically (a temporary file in the same directory, renamed over it) with
    `mode` and, when given and different, `owner` (uid, gid). A reader sees the old file or the
    new one, never half of one, and never a moment of wider permissions."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        st = os.fstat(fd)
        if owner is not None and owner != (st.st_uid, st.st_gid):
            os.fchown(fd, *owner)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)              # the rename itself survives a power cut
    finally:
        os.close(dfd)
