"""``python -m examples.chat [--host H] [--port P]``: serve the chat demo with uvicorn."""

from __future__ import annotations

import argparse
import logging

import uvicorn


def main() -> None:
    parser = argparse.ArgumentParser(description="servletsession chat demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(f"Chat demo on http://{args.host}:{args.port}/  (Ctrl+C to stop)")
    uvicorn.run("examples.chat.app:app", host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
