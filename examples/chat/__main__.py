"""``python -m examples.chat [--host H] [--port P]``: serve the chat demo with uvicorn.

One process, always (``WEB_CONCURRENCY``, ``UVICORN_WORKERS`` and ``GUNICORN_CMD_ARGS`` are
ignored): this is the single-process mode in which the app may sign cookies with a random key when
``CHAT_SECRET_KEY`` is not set. To run several workers, see ``examples/chat/app.py`` and the
README's "Several workers".

A restart keeps the conversations: on the ``memory://`` store they are saved at shutdown to
``CHAT_SESSIONS_FILE`` (default ``.chat-sessions.json`` in the working directory; empty for none)
and restored at startup, and the random key is kept beside them in ``<file>.key`` so that the
browser's cookie is still valid. Both files are created ``0600``: they are as good as passwords.

The key file is treated as the sessions file is (``servletsession.stores.memory_file``): written
atomically (a temporary file, ``fsync``, ``os.replace``), and read only if it is a regular file,
not a symlink, owned by this user and writable by nobody else. A key file that fails those checks
stops the demo with an error naming it (someone else could have chosen the key that signs the
cookies): fix its owner or mode, or delete it. A key file shorter than 32 bytes (empty, cut short
by a crash, edited by hand) is replaced by a new random key, with a warning naming it: the cookies
signed with the old key, and so the saved conversations, are lost, as they would be anyway.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import secrets
from pathlib import Path

import uvicorn

from servletsession.config import MIN_SECRET_KEY_BYTES
from servletsession.stores.memory_file import read_private, write_private

from .app import SINGLE_PROCESS, WORKER_VARIABLES

DEFAULT_SESSIONS_FILE = ".chat-sessions.json"
logger = logging.getLogger("examples.chat")


class KeyFileError(SystemExit):
    """The key file cannot be trusted or read: the demo does not start (exit status 1)."""


def kept_key(sessions_file: Path) -> str:
    """The random signing key kept beside the sessions file, made on first use: without the same
    key after a restart, the saved sessions' cookies would not verify. See the module docstring
    for what is checked; raises `KeyFileError` naming the file when it cannot be used."""
    path = sessions_file.absolute().with_name(sessions_file.name + ".key")
    try:
        key = read_private(path, "could choose the key that signs the cookies").strip()
    except FileNotFoundError:
        key = None
    except OSError as exc:
        why = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror or exc
        raise KeyFileError(
            f"cannot use the key file {path}: {why}. Fix it, or delete it to start with a new "
            "key (the saved conversations are then lost)."
        ) from None
    if key is not None and len(key) >= MIN_SECRET_KEY_BYTES and key.isascii():
        return key.decode()
    if key is not None:
        logger.warning(
            "the key file %s holds no usable key (%d bytes; a key is at least %d ASCII "
            "characters); replacing it with a new random key: the saved conversations are lost",
            path, len(key), MIN_SECRET_KEY_BYTES,
        )  # fmt: skip
    new = secrets.token_urlsafe(32)
    try:
        write_private(path, new.encode() + b"\n")
    except OSError as exc:
        raise KeyFileError(f"cannot write the key file {path}: {exc.strerror or exc}") from None
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description="servletsession chat demo (one process)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ[SINGLE_PROCESS] = "1"  # read by the app in this same process: workers=1 below
    for name in WORKER_VARIABLES:  # counted by the app, but this runs one worker whatever they say
        os.environ.pop(name, None)
    memory = os.environ.get("CHAT_STORE_URL", "memory://") == "memory://"
    if memory:
        os.environ.setdefault("CHAT_SESSIONS_FILE", DEFAULT_SESSIONS_FILE)
    sessions_file = os.environ.get("CHAT_SESSIONS_FILE") if memory else None
    if not os.environ.get("CHAT_SECRET_KEY"):
        if sessions_file:
            os.environ["CHAT_SECRET_KEY"] = kept_key(Path(sessions_file))
            print(f"No CHAT_SECRET_KEY: signing cookies with a random key kept in "
                  f"{sessions_file}.key; conversations are saved to {sessions_file} "
                  "when the server stops and restored when it starts.")  # fmt: skip
        else:
            print("No CHAT_SECRET_KEY: signing cookies with a random key (sessions end on "
                  "restart).")  # fmt: skip
    print(f"Chat demo on http://{args.host}:{args.port}/  (Ctrl+C to stop)")
    uvicorn.run(
        "examples.chat.app:app", host=args.host, port=args.port, workers=1, log_level="info"
    )


if __name__ == "__main__":
    main()
