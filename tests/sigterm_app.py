"""A Starlette app that mounts `pinterest_app(client)` without a lifespan.

For the SIGTERM tests, two ways:

    python -m uvicorn sigterm_app:app --app-dir tests --host 127.0.0.1 --port PORT
        uvicorn imports the app once its own signal handlers are in place,
        as `uvicorn app:app` does.
    python sigterm_app.py PORT
        The client is built before uvicorn starts (`uvicorn.run(app)` in a
        script).

The client comes from the environment (`PINTEREST_ACCESS_TOKEN`,
`PINTEREST_AD_ACCOUNT_ID`, `PINTEREST_API_URL`), keeps events in memory and
flushes once an hour: only the shutdown can send them.
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from pinterest_mw.asgi import pinterest_app
from pinterest_mw.client import Client

client = Client.from_env(flush_interval=3600, shutdown_timeout=10)
app = Starlette(routes=[Mount("/pinterest", pinterest_app(client))])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
