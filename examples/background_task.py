"""A request starts a background job that writes its result into the session later, through an
accessor (Servlet 6.1 ``HttpSession.Accessor``): ``uvicorn examples.background_task:app``.

``POST /reports?topic=...`` answers at once (202) and starts the job in a task. The job keeps an
accessor, never the session object (that belongs to the request, which is over long before the
job is). ``GET /reports`` shows the result once the job has written it. The websocket
``/reports/ws`` answers each message with the job's status, reading the session through an
accessor, so that every message sees what the job wrote — on any store, on any worker.
"""

from __future__ import annotations

import asyncio
import os
import secrets

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from servletsession import IllegalStateError, SessionAccessor, SessionManager, SessionMiddleware
from servletsession.fastapi import OptionalSessionDep, SessionDep

manager = SessionManager(max_inactive_interval=1800)
app = FastAPI(title="servletsession: a background job and its session")
app.add_middleware(
    SessionMiddleware,
    secret_key=os.environ.get("APP_SECRET_KEY") or secrets.token_urlsafe(32),
    manager=manager,
)

#: The jobs under way: the event loop keeps only a weak reference to a task.
jobs: set[asyncio.Task[None]] = set()


async def build_report(topic: str) -> str:
    """Stands for the slow part: an LLM call, a query, a render."""
    await asyncio.sleep(2)
    return f"A report on {topic}."


# --8<-- [start:job]
async def report_job(accessor: SessionAccessor, topic: str) -> None:
    report = await build_report(topic)  # no session is held while the work runs
    try:
        async with accessor.access() as session:  # joins the live session; saved on exit
            session["report"] = report
            session["status"] = "done"
    except IllegalStateError:
        return  # the session ended meanwhile (logout, expiry): nobody to give the report to


@app.post("/reports", status_code=202)
async def start_report(topic: str, session: SessionDep) -> dict[str, str]:
    session["status"] = "running"
    job = asyncio.create_task(report_job(session.accessor(), topic))
    jobs.add(job)
    job.add_done_callback(jobs.discard)
    return {"status": "running"}


# --8<-- [end:job]


@app.get("/reports")
async def show_report(session: OptionalSessionDep) -> dict[str, str | None]:
    if session is None:
        return {"status": None, "report": None}
    return {"status": session.get("status"), "report": session.get("report")}


# --8<-- [start:websocket]
@app.websocket("/reports/ws")
async def report_status(websocket: WebSocket, session: OptionalSessionDep) -> None:
    await websocket.accept()
    if session is None:
        await websocket.close(code=1008)
        return
    accessor = session.accessor()  # obtained in the route, used for every message
    try:
        while True:
            await websocket.receive_text()
            async with accessor.access() as current:  # the session as it is now
                status = {"status": current.get("status"), "report": current.get("report")}
            await websocket.send_json(status)  # sent outside the access: nothing held meanwhile
    except (WebSocketDisconnect, IllegalStateError):
        return  # the client left, or the session ended


# --8<-- [end:websocket]
