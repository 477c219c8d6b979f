"""``GET /healthz``: the container health check and the Kubernetes probes' endpoint.

Answers without the token (probes carry none) and says nothing private: the version and
how many sessions are open. It touches no model and no lock, so a busy server still answers.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from aiohttp import web

from livefuse.web.sessions import SessionManager


def _version() -> str:
    try:
        return version("livefuse")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def add_health_route(app: web.Application, manager: SessionManager, max_sessions: int) -> None:
    """Register ``GET /healthz`` → 200 ``{"status": "ok", "version", "sessions", "max_sessions"}``."""
    answer = {"status": "ok", "version": _version(), "max_sessions": max_sessions}

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({**answer, "sessions": len(manager)})

    app.router.add_get("/healthz", healthz)
