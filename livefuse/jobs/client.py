"""A small HTTP client of the job API (standard library only: works on a bare install)."""

from __future__ import annotations

import http.client
import json
import mimetypes
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlencode, urlsplit

from livefuse.errors import LivefuseError

#: ``--server`` when none is given: ``livefuse serve``'s default address.
DEFAULT_SERVER = "http://127.0.0.1:8080"
_CHUNK = 1024 * 1024


class JobApiError(LivefuseError):
    """The server refused a request, or could not be reached; the message says which and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class JobsClient:
    """Talks to ``server`` (``http://host:port``) with ``token`` when one is set."""

    server: str = DEFAULT_SERVER
    token: str | None = None
    timeout_s: float = 60.0

    def submit(self, source: Path, target: Path, options: dict[str, Any]) -> dict[str, Any]:
        """Upload the photo and the video or image; the queued job."""
        for path in (source, target):
            if not path.is_file():
                raise JobApiError(0, f"{path} does not exist; pass the path of an existing file")
        body = _Multipart([("options", json.dumps(options).encode())], [("source", source), ("target", target)])
        headers = {"Content-Type": body.content_type, "Content-Length": str(body.length)}
        with self._request("POST", "/api/jobs", body, headers) as response:
            return _json(response)

    def get(self, job_id: str) -> dict[str, Any]:
        with self._request("GET", f"/api/jobs/{job_id}") as response:
            return _json(response)

    def list(self, state: str | None = None, limit: int = 50, cursor: int | None = None) -> dict[str, Any]:
        query = {k: v for k, v in {"state": state, "limit": limit, "cursor": cursor}.items() if v is not None}
        with self._request("GET", f"/api/jobs?{urlencode(query)}") as response:
            return _json(response)

    def delete(self, job_id: str) -> dict[str, Any]:
        with self._request("DELETE", f"/api/jobs/{job_id}") as response:
            return _json(response)

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event, job) pairs from the events stream until the job is final."""
        with self._request("GET", f"/api/jobs/{job_id}/events", stream=True) as response:
            if response.status >= 400:
                _json(response)
            event, data = "message", []
            for raw in response:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    yield event, json.loads("\n".join(data))
                    event, data = "message", []

    def fetch(self, job_id: str, output: Path) -> Path:
        """Download the result to ``output`` (through a temporary file: never half-written)."""
        tmp = output.with_name(f".{output.name}.{secrets.token_hex(4)}.part")
        try:
            with self._request("GET", f"/api/jobs/{job_id}/result", stream=True) as response:
                if response.status >= 400:
                    _json(response)
                with tmp.open("xb") as fh:
                    while chunk := response.read(_CHUNK):
                        fh.write(chunk)
            os.replace(tmp, output)
        finally:
            tmp.unlink(missing_ok=True)
        return output

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> http.client.HTTPResponse:
        url = urlsplit(self.server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise JobApiError(0, f"--server {self.server!r} is not an http(s)://host:port URL")
        kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        # A stream (events, a download) may be quiet for long: no read timeout on it.
        conn = kind(url.hostname, url.port, timeout=None if stream else self.timeout_s)
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, url.path.rstrip("/") + path, body=body, headers=headers)
            return conn.getresponse()
        except OSError as exc:
            raise JobApiError(0, f"cannot reach {self.server} ({exc}); is livefuse serve running there?") from None


def _json(response: http.client.HTTPResponse) -> dict[str, Any]:
    data = response.read()
    try:
        body = json.loads(data) if data else {}
    except json.JSONDecodeError:
        body = {"error": data[:200].decode("utf-8", "replace")}
    if response.status >= 400:
        raise JobApiError(response.status, f"the server answered {response.status}: {body.get('error', body)}")
    return body


class _Multipart:
    """A multipart/form-data body read from disk as it is sent, with its exact length."""

    def __init__(self, fields: list[tuple[str, bytes]], files: list[tuple[str, Path]]) -> None:
        self.boundary = "livefuse-" + secrets.token_hex(12)
        self._parts: list[bytes | Path] = []
        for name, value in fields:
            self._parts += [self._head(name, None, "application/json"), value, b"\r\n"]
        for name, path in files:
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            self._parts += [self._head(name, path.name, kind), path, b"\r\n"]
        self._parts.append(f"--{self.boundary}--\r\n".encode())

    def _head(self, name: str, filename: str | None, kind: str) -> bytes:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        return f"--{self.boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {kind}\r\n\r\n".encode()

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def length(self) -> int:
        return sum(p.stat().st_size if isinstance(p, Path) else len(p) for p in self._parts)

    def __iter__(self) -> Iterator[bytes]:
        for part in self._parts:
            if isinstance(part, bytes):
                yield part
                continue
            with part.open("rb") as fh:
                yield from _chunks(fh)


def _chunks(fh: BinaryIO) -> Iterator[bytes]:
    while chunk := fh.read(_CHUNK):
        yield chunk
