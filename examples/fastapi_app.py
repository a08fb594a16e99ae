"""A FastAPI app on servletsession: ``uvicorn examples.fastapi_app:app``.

A shopping cart in the session, a login that binds the principal and rotates the session ID,
and a websocket that greets the session's user. ``pip install -e '.[demo]'`` installs what it
needs: FastAPI, uvicorn and a websocket implementation (``websockets``; the ``fastapi`` extra
brings it too), without which uvicorn answers the websocket route with 404.
"""

from __future__ import annotations

import os
import secrets

from fastapi import FastAPI, Request, WebSocket
from pydantic import BaseModel

from servletsession import SessionManager, SessionMiddleware, change_session_id
from servletsession.fastapi import OptionalSessionDep, SessionDep


class Cart(BaseModel):
    items: list[str] = []


manager = SessionManager(max_inactive_interval=1800)
app = FastAPI(title="servletsession + FastAPI")
app.add_middleware(
    SessionMiddleware,
    secret_key=os.environ.get("APP_SECRET_KEY") or secrets.token_urlsafe(32),
    manager=manager,
)


@app.post("/cart")
async def add_to_cart(item: str, session: SessionDep) -> Cart:
    cart = session.get_attribute("cart") or Cart()
    cart.items.append(item)
    session.set_attribute("cart", cart)
    return cart


@app.get("/cart")
async def show_cart(session: OptionalSessionDep) -> Cart:
    return session.get_attribute("cart", Cart()) if session is not None else Cart()


@app.post("/login")
async def login(user: str, request: Request, session: SessionDep) -> dict[str, str]:
    session.set_attribute("user", user)
    session.principal = user
    change_session_id(request)
    return {"user": user}


@app.websocket("/ws")
async def greet(websocket: WebSocket, session: OptionalSessionDep) -> None:
    await websocket.accept()
    user = session.get_attribute("user") if session is not None else None
    await websocket.send_text(f"hello {user or 'stranger'}")
    await websocket.close()
