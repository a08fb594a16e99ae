"""``python -m examples.chat [--host H] [--port P]``: serve the chat demo with uvicorn.

One process, always (``WEB_CONCURRENCY``, ``UVICORN_WORKERS`` and ``GUNICORN_CMD_ARGS`` are
ignored): this is the single-process mode in which the app may sign cookies with a random key made
at start when ``CHAT_SECRET_KEY`` is not set. To run several workers, see
``examples/chat/app.py`` and the README's "Several workers".
"""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn

from .app import SINGLE_PROCESS, WORKER_VARIABLES


def main() -> None:
    parser = argparse.ArgumentParser(description="servletsession chat demo (one process)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ[SINGLE_PROCESS] = "1"  # read by the app in this same process: workers=1 below
    for name in WORKER_VARIABLES:  # counted by the app, but this runs one worker whatever they say
        os.environ.pop(name, None)
    if not os.environ.get("CHAT_SECRET_KEY"):
        print("No CHAT_SECRET_KEY: signing cookies with a random key (sessions end on restart).")
    print(f"Chat demo on http://{args.host}:{args.port}/  (Ctrl+C to stop)")
    uvicorn.run(
        "examples.chat.app:app", host=args.host, port=args.port, workers=1, log_level="info"
    )


if __name__ == "__main__":
    main()
