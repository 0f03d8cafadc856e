"""The baseline: a bare FastAPI endpoint under the uvicorn configuration the hub uses.

It reads the same bodies the hub gets, JSON-parses them and answers 202 with a small
OperationOutcome: what the framework, the server and the parse cost, without anything of the
hub. One process, like ``uvicorn.Server`` in ``renkei up`` (uvloop, httptools, access log on).

    .venv/bin/python -m tests.benchmarks.bare_app --port 8123
"""

from __future__ import annotations

import argparse
import json

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI()

ACCEPTED = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "information", "code": "informational", "diagnostics": "accepted"}],
}


@app.post("/fhir/$process-message")
async def process_message(request: Request) -> JSONResponse:
    bundle = json.loads(await request.body())
    outcome = dict(ACCEPTED, id=str(bundle["entry"][0]["resource"]["id"]))
    return JSONResponse(outcome, status_code=202, media_type="application/fhir+json")


@app.get("/readyz")
async def ready() -> dict[str, str]:
    return {"status": "ready"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=args.port, log_level="info", loop="uvloop", http="httptools"
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
