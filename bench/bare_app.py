"""The bare baseline for bench/read_search.py: the same SELECTs as sharedcare, and nothing else.

A minimal FastAPI app on the same driver and pool as the store — the SQLAlchemy async engine
(`postgresql+psycopg`) that `engine.db.database.open_database` creates, so its pool settings follow the
store's — and nothing else: no authentication, no logging, no middleware, no access gate, no Bundle.
It answers

- `GET /bare/Patient/{id}` — `SELECT content::text FROM resources WHERE res_type='Patient' AND res_id=:id`,
  the stored bytes as they are (404 when there is no such row);
- `GET /bare/Observation?patient=X` — the one equivalent search SELECT (the `patient` rows of
  `idx_reference` joined to `resources`, LIMIT 21), the rows joined into a JSON array.

Configured by `BENCH_DATABASE_URL` (a plain `postgresql://` URL is accepted). Served by
bench/read_search.py as:  python bench/bare_app.py --port P --workers W

That runs uvicorn as `uvicorn.run` does — one process for one worker, else the `Multiprocess`
supervisor over a socket bound beforehand — with one difference: the listening socket is created with
`IPPROTO_TCP`, so that asyncio turns Nagle's algorithm off (TCP_NODELAY) on the connections it accepts.
`uvicorn.Config.bind_socket` leaves `proto` at 0, so with `--workers` > 1 plain uvicorn serves every
keep-alive response ~40 ms late (headers and body go out in two writes, the second waits for the
client's delayed ACK): https://github.com/Kludex/uvicorn/issues/3149. `--uvicorn-socket` binds the way
uvicorn does, to see that cost.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.db.database import open_database

FHIR_JSON = "application/fhir+json"

READ = text("SELECT content::text FROM resources WHERE res_type = 'Patient' AND res_id = :id")
SEARCH = text(
    "SELECT r.content::text FROM idx_reference i JOIN resources r ON r.pk = i.res_pk"
    " WHERE i.res_type = 'Observation' AND i.param = 'patient' AND i.target_id = :patient"
    " AND r.res_type = 'Observation' AND NOT r.deleted"
    " ORDER BY r.pk LIMIT 21"
)


store: AsyncEngine | None = None


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    global store
    # The store's own engine: same driver, same pool size and overflow (engine/db/database.py).
    store = open_database(os.environ["BENCH_DATABASE_URL"]).reader  # the same read engine (autocommit) as the store
    try:
        yield
    finally:
        await store.dispose()


app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/bare/Patient/{res_id}")
async def read(res_id: str) -> Response:
    assert store is not None
    async with store.connect() as conn:
        content = (await conn.execute(READ, {"id": res_id})).scalar()
    if content is None:
        return Response(b"{}", status_code=404, media_type=FHIR_JSON)
    return Response(content.encode(), media_type=FHIR_JSON)


@app.get("/bare/Observation")
async def search(patient: str) -> Response:
    assert store is not None
    async with store.connect() as conn:
        rows = (await conn.execute(SEARCH, {"patient": patient})).scalars().all()
    return Response(("[" + ",".join(rows) + "]").encode(), media_type=FHIR_JSON)


@app.get("/healthz")
async def healthz() -> Response:
    assert store is not None
    async with store.connect() as conn:
        await conn.execute(text("SELECT 1"))
    return Response(b'{"status":"ok"}', media_type="application/json")


def bound_socket(host: str, port: int, *, like_uvicorn: bool = False) -> socket.socket:
    """A listening TCP socket for the worker processes; `like_uvicorn` leaves proto 0 as uvicorn does."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    proto = 0 if like_uvicorn else socket.IPPROTO_TCP
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    parser = argparse.ArgumentParser(description="Serve the bare baseline of bench/read_search.py.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--uvicorn-socket", action="store_true",
                        help="bind as uvicorn does (proto 0: no TCP_NODELAY with --workers > 1)")
    args = parser.parse_args(argv)
    # The worker processes are spawned: they import bare_app from this folder.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    config = uvicorn.Config("bare_app:app", host=args.host, port=args.port, workers=args.workers,
                            log_level="warning", access_log=False)
    if args.workers > 1:
        sock = bound_socket(args.host, args.port, like_uvicorn=args.uvicorn_socket)
        Multiprocess(config, sockets=[sock]).run()
    else:
        uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
