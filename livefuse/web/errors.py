"""Errors the web server answers with an HTTP status and a message (never a traceback)."""

from __future__ import annotations

from livefuse.errors import LivefuseError


class ApiError(LivefuseError):
    """A request the server refuses. ``status`` is the HTTP status it is answered with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SessionLimit(ApiError):
    """Every session slot is taken (HTTP 503)."""

    def __init__(self, message: str) -> None:
        super().__init__(503, message)


class SessionNotFound(ApiError):
    """No session with this id: it never existed, or it ended (HTTP 404)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(
            404,
            f"no session {session_id!r}: it ended or never existed; start a new one from the "
            "demo page or reconnect OBS",
        )
