"""The ChatStream seed's session setup after the one-import change: ``uvicorn
tests.apps.fastsession_seed:app``.

FastAPI, ``FastSessionMiddleware`` with the seed's own example key (23 bytes), ``MemoryStore``,
ChatStream's skip header and its ``logging.Logger`` passed as ``logger=``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request

from servletsession.compat.fastsession import FastSessionMiddleware, MemoryStore

logger = logging.getLogger("chatstream")
logger.setLevel(logging.DEBUG)
_handler = logging.StreamHandler()
_handler.setFormatter(logging.Formatter("chatstream %(levelname)s %(message)s"))
logger.addHandler(_handler)
logger.propagate = False

app = FastAPI()
app.add_middleware(
    FastSessionMiddleware,
    secret_key="your-session-secret-key",  # Key for cookie signature
    store=MemoryStore(),  # Store for session saving
    http_only=True,
    secure=False,  # ChatStream's develop_mode
    skip_session_header={"header_name": "X-FastSession-Skip", "header_value": "skip"},
    logger=logger,
)


@app.post("/chat")
async def chat(say: str, request: Request) -> dict[str, list[str]]:
    session_mgr = request.state.session
    session = session_mgr.get_session()
    history: list[str] = session.get("history") or []
    history.append(say)
    session["history"] = history
    session_mgr.save_session()
    return {"history": history}
