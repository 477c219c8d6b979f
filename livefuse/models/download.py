"""HTTP(S) downloads of published model files: streamed, resumable, and checked before use.

:func:`fetch` streams a URL into a ``.part`` file. A ``.part`` left by an interrupted run is
continued with a ``Range`` request; a server that ignores ``Range`` is read again from the start.
When the transfer ends the size and the sha256 of the whole file are checked; a file with the
wrong hash is deleted, so only a verified ``.part`` is ever handed back. Moving it into place
(an atomic rename on the same file system) is the caller's job, after its own checks.

Only the standard library is used (urllib), so the user's proxy settings (``https_proxy``...)
and the system's certificates apply as they do for any Python program.
"""

from __future__ import annotations

import http.client
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from livefuse.errors import ModelError

Log = Callable[[str], None]
Progress = Callable[[int, int | None], None]
"Called as ``progress(bytes_done, bytes_total)`` while a file downloads (total None if unknown)."

#: Progress lines go to the log at most this often (each further tenth of the file also logs).
LOG_EVERY_S = 5.0

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """How downloads behave. The defaults suit a user's connection; tests shrink them."""

    timeout_s: float = 60.0
    "Seconds a connect or a read may block before the attempt counts as cut."
    retries: int = 3
    "Further attempts after a transfer is cut, as long as each one makes progress."
    backoff_s: float = 2.0
    "Pause before the n-th retry: ``n * backoff_s`` seconds."
    chunk_bytes: int = 1 << 20
    user_agent: str = "livefuse-model-download/1"


@dataclass(frozen=True, slots=True)
class Fetch:
    """One file to download and what it must be."""

    url: str
    sha256: str
    "Pinned sha256 of the whole file (64 lowercase hex digits)."
    size: int | None
    "Published size in bytes, or None when unknown (then the server's word is taken)."
    what: str
    "Names the download in messages, e.g. ``model 'inswapper_128'``."
    manual: str
    "How to get the file without livefuse's downloader; ends every error message."


class _Interrupted(Exception):
    """The transfer stopped early; what arrived is kept in the ``.part`` file."""


class _Restart(Exception):
    """The server's answer does not continue the ``.part`` file: it must be fetched anew."""


def fetch(
    job: Fetch,
    part: Path,
    *,
    options: HttpOptions | None = None,
    log: Log | None = None,
    progress: Progress | None = None,
) -> Path:
    """Download ``job.url`` into ``part`` (resuming what is there) and return ``part``.

    Returns only once the file has the pinned size and sha256. Raises ``ModelError`` for a bad
    URL, an HTTP error, a server that cannot be reached, a download that keeps stopping short
    (the ``.part`` is kept for the next run) and a wrong hash (the ``.part`` is deleted).
    """
    opts = options or HttpOptions()
    say = log or (lambda _msg: None)
    _check_url(job)
    part.parent.mkdir(parents=True, exist_ok=True)
    if job.size is not None and _size(part) > job.size:
        part.unlink()  # longer than the published file: cannot be a prefix of it
    _transfer_with_retries(job, part, opts, say, progress)
    _verify(job, part)
    return part


def _check_url(job: Fetch) -> None:
    scheme = urllib.parse.urlsplit(job.url).scheme
    if scheme not in ("http", "https"):
        raise ModelError(f"{job.what}: {job.url!r} is not an http(s) URL, so livefuse cannot download it; {job.manual}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _transfer_with_retries(job: Fetch, part: Path, opts: HttpOptions, say: Log, progress: Progress | None) -> None:
    attempt = 0
    while True:
        before = _size(part)
        try:
            _transfer(job, part, opts, say, progress)
            return
        except _Interrupted as exc:
            got = _size(part)
            attempt += 1
            if got <= before or attempt > opts.retries:
                raise ModelError(_stopped_message(job, got, str(exc))) from exc
            say(f"{job.what}: the transfer stopped at {_mb(got)} ({exc}); resuming")
            time.sleep(attempt * opts.backoff_s)


def _stopped_message(job: Fetch, got: int, reason: str) -> str:
    total = f" of {_mb(job.size)}" if job.size is not None else ""
    return (
        f"{job.what}: the download of {job.url} stopped at {_mb(got)}{total} ({reason}) and did "
        "not get further; the part already downloaded is kept and nothing was installed. Run "
        f"the same command again to resume once the connection is better, or {job.manual}"
    )


def _transfer(job: Fetch, part: Path, opts: HttpOptions, say: Log, progress: Progress | None) -> None:
    """One attempt: request what is missing and append it to ``part``."""
    have = _size(part)
    if job.size is not None and have == job.size:
        return  # complete from an earlier run; the hash check decides whether it is good
    with _open(job, have, opts, part) as response:
        try:
            start = _start_offset(response, have)
        except _Restart as exc:
            say(f"{job.what}: {exc}; starting again")
        else:
            _announce(job, have, start, say)
            total = _expected_total(job, response, start)
            _stream(job, response, part, start, total, opts, say, progress)
            return
    part.unlink()
    _transfer(job, part, opts, say, progress)  # without a Range header this cannot restart again


def _announce(job: Fetch, have: int, start: int, say: Log) -> None:
    if have and start == 0:
        say(f"{job.what}: the server does not resume downloads; starting again")
    if start:
        say(f"{job.what}: resuming at {_mb(start)} of {_mb(job.size)}")
    else:
        say(f"{job.what}: downloading {job.url} ({_mb(job.size)})")


def _open(job: Fetch, have: int, opts: HttpOptions, part: Path) -> http.client.HTTPResponse:
    headers = {"User-Agent": opts.user_agent, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(job.url, headers=headers)
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=opts.timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:
            # The server says our .part already reaches past the file: it cannot be resumed.
            part.unlink()
            return _open(job, 0, opts, part)
        raise ModelError(
            f"{job.what}: the server answered HTTP {exc.code} ({exc.reason}) for {job.url}; "
            f"the file may have moved or the server is down. Try again later, or {job.manual}"
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelError(
            f"{job.what}: cannot reach {job.url} ({reason}); check the network connection and "
            f"proxy settings (https_proxy), or {job.manual}"
        ) from exc
    return response


def _start_offset(response: http.client.HTTPResponse, have: int) -> int:
    """Where the body starts in the file: ``have`` for a matching 206, else 0."""
    if response.status != 206:
        return 0  # a plain 200: the whole file, whatever was asked
    match = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
    if match is None or int(match.group(1)) != have:
        raise _Restart(f"the server answered a range other than bytes={have}-")
    return have


def _expected_total(job: Fetch, response: http.client.HTTPResponse, start: int) -> int | None:
    if job.size is not None:
        return job.size
    length = response.headers.get("Content-Length")
    return start + int(length) if length and length.isdigit() else None


def _stream(
    job: Fetch,
    response: http.client.HTTPResponse,
    part: Path,
    start: int,
    total: int | None,
    opts: HttpOptions,
    say: Log,
    progress: Progress | None,
) -> None:
    done = start
    report = _Reporter(job.what, total, say, progress)
    # A 200 after a Range request rewrites the file from byte 0 ("wb" truncates it).
    with open(part, "ab" if start else "wb") as out:
        try:
            while chunk := response.read(opts.chunk_bytes):
                out.write(chunk)
                done += len(chunk)
                if job.size is not None and done > job.size:
                    break
                report(done)
        except (http.client.HTTPException, OSError) as exc:
            # Connection reset, timeout, or a body shorter than its Content-Length.
            raise _Interrupted(type(exc).__name__ + (f": {exc}" if str(exc) else "")) from exc
        finally:
            out.flush()
            os.fsync(out.fileno())
    _check_length(job, part, done, total)


def _check_length(job: Fetch, part: Path, done: int, total: int | None) -> None:
    if job.size is not None and done > job.size:
        part.unlink()
        raise ModelError(
            f"{job.what}: {job.url} sent more than the {job.size:,} bytes of the published "
            f"file, so it serves something else; the download was deleted. {job.manual}"
        )
    if total is not None and done < total:
        raise _Interrupted(f"the connection closed after {done:,} of {total:,} bytes")


def _verify(job: Fetch, part: Path) -> None:
    from livefuse.models.files import sha256_file, short

    digest = sha256_file(part)
    if digest != job.sha256:
        part.unlink()
        raise ModelError(
            f"{job.what}: the file downloaded from {job.url} has sha256 {short(digest)} but "
            f"{short(job.sha256)} is pinned; it was deleted and nothing was installed. The "
            "server may now publish a different file, or the download was tampered with on the "
            f"way. {job.manual}"
        )


def _mb(size: int | None) -> str:
    return "unknown size" if size is None else f"{size / 1e6:.1f} MB"


class _Reporter:
    """Passes every chunk to ``progress`` and logs a line per tenth of the file or per 5 s."""

    def __init__(self, what: str, total: int | None, say: Log, progress: Progress | None) -> None:
        self.what, self.total, self.say, self.progress = what, total, say, progress
        self.last_time = time.monotonic()
        self.last_tenth = 0

    def __call__(self, done: int) -> None:
        if self.progress is not None:
            self.progress(done, self.total)
        now = time.monotonic()
        tenth = done * 10 // self.total if self.total else 0
        if tenth > self.last_tenth or now - self.last_time >= LOG_EVERY_S:
            share = f" ({100 * done // self.total}%)" if self.total else ""
            self.say(f"{self.what}: {_mb(done)} of {_mb(self.total)}{share}")
            self.last_time, self.last_tenth = now, tenth
