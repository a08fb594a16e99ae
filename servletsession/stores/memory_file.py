"""The file a ``MemoryStore(persist_to=...)`` keeps its sessions in while the app is down.

Tomcat's ``StandardManager`` writes ``SESSIONS.ser`` at shutdown and reads it back at startup; this
is the same idea with JSON instead of Java serialization, and with the care a file of bearer
credentials needs:

* written atomically: a temporary file in the same directory, ``fsync``, then ``os.replace``, so a
  crash or a full disk mid-write leaves the previous file as it was, never half a file;
* private: created ``0600`` (it holds session IDs, which are as good as passwords until they
  expire), and refused at startup when another user owns it or others may write to it, so that
  nobody else can plant sessions in it;
* never fatal: a file that cannot be read is logged and the app starts without sessions.

This module knows the file and its outer shape (a format name, a version, a list of session
records); what a record holds is `servletsession.restart`'s business.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pydantic_core

from ..errors import ConfigurationError
from ..serializers import JSONSerializer

logger = logging.getLogger("servletsession")

FORMAT = "servletsession.MemoryStore"
VERSION = 1


class SessionFile:
    """One store's file: where it is, and how it is written, read and removed. ``serializer``
    writes and reads attribute values (the manager's ``models=`` allow-list goes to it)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, str | os.PathLike) or not os.fspath(path):
            raise ConfigurationError(
                f"persist_to takes the path of a file (str or pathlib.Path), got {path!r}"
            )
        # Absolute now, so that a later chdir() cannot move it.
        self.path = Path(os.fspath(path)).absolute()
        if self.path.is_dir():
            raise ConfigurationError(f"persist_to={str(self.path)!r} is a directory; name a file")
        if self.path.exists() and not self.path.is_file():
            raise ConfigurationError(f"persist_to={str(self.path)!r} is not a regular file")
        if not self.path.parent.is_dir():
            raise ConfigurationError(
                f"persist_to: the directory {str(self.path.parent)!r} does not exist; create it "
                "(writable by the app's user only) or name a file in another one"
            )
        self.serializer = JSONSerializer()

    def __repr__(self) -> str:
        return f"SessionFile({str(self.path)!r})"

    # --- writing -----------------------------------------------------------------------------

    def write(self, records: list[dict[str, Any]], saved_at: float) -> None:
        """Replace the file with ``records``, atomically; raises ``OSError`` (the old file then
        stays as it was)."""
        data = pydantic_core.to_json(
            {"format": FORMAT, "version": VERSION, "saved_at": saved_at, "sessions": records}
        )
        write_private(self.path, data)

    # --- reading -----------------------------------------------------------------------------

    def read(self) -> list[Any] | None:
        """The session records in the file, or ``None`` if there is none or it cannot be used
        (logged, except for a missing file: the usual first start)."""
        self._remove_leftovers()
        try:
            data = read_private(self.path, "could plant sessions")
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.error(
                "cannot read the saved sessions in %s (%s); starting without them",
                self.path, exc.strerror or exc,
            )  # fmt: skip
            return None
        try:
            document = pydantic_core.from_json(data)
        except ValueError as exc:
            self._refuse(f"it is not JSON ({str(exc).splitlines()[0]})")
            return None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            self._refuse(f"it is not a {FORMAT} sessions file")
            return None
        if document.get("version") != VERSION:
            self._refuse(
                f"it has version {document.get('version')!r} and this servletsession reads "
                f"version {VERSION} (written by another release?)"
            )
            return None
        sessions = document.get("sessions")
        if not isinstance(sessions, list):
            self._refuse("its 'sessions' is not a list")
            return None
        return sessions

    def delete(self) -> None:
        """Remove the file once read: a crash later must not bring back sessions that have ended
        since (a logout would be undone). A failure is logged."""
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            logger.error(
                "cannot delete %s after restoring its sessions (%s): after a crash they would be "
                "restored again; delete it by hand", self.path, exc.strerror or exc,
            )  # fmt: skip

    def _refuse(self, why: str) -> None:
        logger.error(
            "cannot restore the saved sessions in %s: %s; starting without them (the file is "
            "left in place and replaced at the next shutdown)", self.path, why,
        )  # fmt: skip

    def _remove_leftovers(self) -> None:
        """Temporary files of a write cut short by a crash (they hold session IDs too)."""
        prefix = _temporary_prefix(self.path)
        with contextlib.suppress(OSError):
            for entry in self.path.parent.iterdir():
                if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        entry.unlink()


# --- private files (also the chat demo's key file) ------------------------------------------------


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, atomically and readable by this user only (``0600``): a
    temporary file in the same directory, ``fsync``, ``os.replace`` (which replaces a symlink
    itself, never its target), then an ``fsync`` of the directory. Raises ``OSError``; the old
    file then stays as it was and the temporary one is removed."""
    directory = path.parent
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=_temporary_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            if hasattr(os, "fchmod"):  # mkstemp makes it 0600 already; say so regardless
                os.fchmod(out.fileno(), 0o600)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


def read_private(path: Path, planted: str) -> bytes:
    """The bytes of ``path``, if it is a regular file (not a symlink) this user owns and only this
    user may write, checked on the opened file so that it cannot be swapped between check and
    read. Raises ``FileNotFoundError``, or ``OSError`` saying what is wrong and that someone else
    ``planted`` (e.g. "could plant sessions") through it."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as source:
        info = os.fstat(source.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            raise OSError(
                f"it belongs to uid {info.st_uid}, not to this process's user; a file "
                f"someone else wrote {planted}"
            )
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise OSError(
                f"others may write to it (mode {stat.filemode(info.st_mode)}); a file "
                f"someone else wrote {planted}: chmod 600 it"
            )
        return source.read()


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); where a directory cannot be opened, skip it."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
