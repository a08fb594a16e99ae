"""FastAPI dependencies: the request's session as a typed parameter.

```python
from servletsession.fastapi import SessionDep, OptionalSessionDep

@app.post("/cart")
async def add(item: str, session: SessionDep) -> dict[str, int]:
    cart = session.get_attribute("cart", [])
    session.set_attribute("cart", [*cart, item])
    return {"items": len(cart) + 1}
```

Both take the connection only (``HTTPConnection``), so they work in HTTP and websocket routes and
add nothing to the OpenAPI schema. Requires ``SessionMiddleware`` on the app.

Both are ``async def`` although they never await: FastAPI runs a plain ``def`` dependency in a
worker thread, and an ``async def`` one on the event loop, where the session's ``async def``
listeners (``session_created``) run. A plain ``def`` route using them is fine too: the events it
causes from its worker thread are handed to the loop, in order, and delivered before the response
is finished.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from .context import get_session
from .session import HttpSession


async def session_of(connection: HTTPConnection) -> HttpSession:
    """The request's session, created if it has none (``request.getSession()``)."""
    session = get_session(connection, create=True)
    assert session is not None
    return session


async def optional_session_of(connection: HTTPConnection) -> HttpSession | None:
    """The request's session, or ``None`` if it has none (``request.getSession(false)``)."""
    return get_session(connection, create=False)


SessionDep = Annotated[HttpSession, Depends(session_of)]
"""The request's session, created on first use."""

OptionalSessionDep = Annotated[HttpSession | None, Depends(optional_session_of)]
"""The request's session if it has one; creates nothing."""

__all__ = ["OptionalSessionDep", "SessionDep", "optional_session_of", "session_of"]
