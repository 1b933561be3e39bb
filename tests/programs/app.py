"""A FastAPI application as users write them, for the tests of `prefork run`.

The websocket handler is the classic one that hangs plain uvicorn's shutdown: it loops
forever and swallows every error, so it never learns that the server is stopping.
"""

import asyncio
import os
import sys

from fastapi import FastAPI, WebSocket

# The tests rewrite this line to deploy new code.
VERSION = "v1"

app = FastAPI()


@app.get("/")
async def root():
    return {"version": VERSION, "worker": os.environ.get("PREFORK_WORKER"), "pid": os.getpid()}


@app.get("/sleep")
async def sleep(s: float = 1.0):
    # On standard error, which the tests read: the request has reached the application.
    print(f"app: sleeping {s}", file=sys.stderr, flush=True)
    await asyncio.sleep(s)
    return {"slept": s}


@app.websocket("/ws")
async def ticks(websocket: WebSocket):
    await websocket.accept()
    await websocket.send_text("hello")
    while True:
        try:
            await websocket.send_text("tick")
        except Exception:
            pass
        try:
            await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            pass
