"""The job routes of ``livefuse serve`` (same token rules as the rest of the API).

==================================  ===========================================================
``POST /api/jobs``                  multipart ``source`` (face photo), ``target`` (video or
                                    image), optional ``options`` (JSON) → 202 + Location
``GET /api/jobs``                   ``?state=&limit=&cursor=`` → ``{jobs, next_cursor}``
``GET /api/jobs/{id}``              the job: state, progress, fps, eta_s, error, times, result
``GET /api/jobs/{id}/events``       Server-Sent Events: ``state`` and ``progress`` changes
``GET /api/jobs/{id}/result``       the output file (Range requests; a download file name)
``DELETE /api/jobs/{id}``           cancel a queued/running job, or delete a finished one
==================================  ===========================================================
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import logging
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import BodyPartReader, web

from livefuse.jobs.files import disk_full, extension, is_video, sniff_media
from livefuse.jobs.model import JobState, is_job_id, new_job_id
from livefuse.jobs.service import JobService, Upload
from livefuse.web.errors import ApiError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Bytes read from the network before each write to disk.
CHUNK = 1024 * 1024
#: Largest ``options`` field.
MAX_OPTIONS_BYTES = 64 * 1024
#: How often the events stream looks at the job, and sends a keep-alive comment.
EVENTS_POLL_S = 0.2
KEEPALIVE_S = 15.0
#: How often the backend's state is pulled into the table, and expired jobs are swept.
SYNC_S = 0.5
SWEEP_S = 60.0


class JobsApi:
    """The handlers; every blocking call goes to the default executor."""

    def __init__(self, service: JobService) -> None:
        self.service = service
        self._tasks: list[asyncio.Task[None]] = []

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/jobs", self.submit)
        app.router.add_get("/api/jobs", self.listing)
        app.router.add_get("/api/jobs/{job}", self.show)
        app.router.add_get("/api/jobs/{job}/events", self.events)
        app.router.add_get("/api/jobs/{job}/result", self.result)
        app.router.add_delete("/api/jobs/{job}", self.delete)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)

    # -- background ---------------------------------------------------------------------

    async def _start(self, app: web.Application) -> None:
        await _blocking(self.service.files.clean_incoming)
        await _blocking(self.service.backend.start)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(_every(SYNC_S, self.service.backend.sync, "syncing job states")),
            loop.create_task(_every(min(SWEEP_S, self.service.retention_s / 4), self.service.sweep, "expiring jobs")),
        ]

    async def _stop(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        await _blocking(self.service.backend.close)

    # -- routes -------------------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.Response:
        """Receive the uploads into a private directory, check them, queue the job."""
        if not request.content_type.startswith("multipart/form-data"):
            raise ApiError(415, "send the job as multipart/form-data with fields source, target and options")
        files = self.service.files
        await _blocking(files.check_room, request.content_length or 0)
        job_id = new_job_id()
        incoming = await _blocking(files.incoming, job_id)
        try:
            source, target, options = await self._receive(request, incoming)
            job = await _blocking(self.service.add, job_id, incoming, source, target, options)
        except BaseException:
            await _blocking(files.discard, incoming)
            raise
        return web.json_response(job.public(), status=202, headers={"Location": f"/api/jobs/{job.id}"})

    async def _receive(self, request: web.Request, incoming: Path) -> tuple[Upload, Upload, str | None]:
        reader = await request.multipart()
        got: dict[str, Upload] = {}
        options: str | None = None
        limits = self.service.files.limits
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "nested multipart bodies are not accepted")
            if part.name == "options":
                options = (await _read_limited(part, MAX_OPTIONS_BYTES, "options")).decode("utf-8", "replace")
            elif part.name in ("source", "target") and part.name not in got:
                limit = limits.max_source_bytes if part.name == "source" else limits.max_target_bytes
                got[part.name] = await _stream_to_disk(part, incoming, part.name, limit)
            else:
                raise ApiError(400, f"unexpected form field {part.name!r}; send source, target and options")
        missing = [name for name in ("source", "target") if name not in got]
        if missing:
            raise ApiError(
                400,
                f"missing form field(s) {', '.join(missing)}: send the face photo as 'source' "
                "and the video or image as 'target'",
            )
        return got["source"], got["target"], options

    async def listing(self, request: web.Request) -> web.Response:
        query = request.query
        state = None
        if query.get("state"):
            try:
                state = JobState(query["state"])
            except ValueError:
                raise ApiError(400, f"state must be one of {', '.join(s.value for s in JobState)}") from None
        limit = _int_query(query, "limit", 50, 1, 500)
        cursor = _int_query(query, "cursor", None, 0, None)
        jobs, next_cursor = await _blocking(self.service.store.page, state, limit, cursor)
        return web.json_response({"jobs": [j.public() for j in jobs], "next_cursor": next_cursor})

    async def show(self, request: web.Request) -> web.Response:
        job = await _blocking(self.service.get, _job_id(request))
        return web.json_response(job.public())

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: the job's JSON on each change (``state`` or ``progress``), until final."""
        job_id = _job_id(request)
        job = await _blocking(self.service.get, job_id)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        last: dict[str, Any] | None = None
        quiet = 0.0
        while True:
            data = job.public()
            if data != last:
                kind = "state" if last is None or last["state"] != data["state"] else "progress"
                await response.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
                last, quiet = data, 0.0
            elif quiet >= KEEPALIVE_S:
                await response.write(b": keep-alive\n\n")
                quiet = 0.0
            if job.state.final:
                break
            await asyncio.sleep(EVENTS_POLL_S)
            quiet += EVENTS_POLL_S
            found = await _blocking(self.service.store.get, job_id)
            if found is None:
                await response.write(b"event: deleted\ndata: {}\n\n")
                break
            job = found
        await response.write_eof()
        return response

    async def result(self, request: web.Request) -> web.StreamResponse:
        job = await _blocking(self.service.get, _job_id(request))
        if job.state is not JobState.SUCCEEDED or job.result_name is None:
            raise ApiError(409, f"job {job.id} is {job.state.value}: its result exists once it has succeeded")
        path = self.service.files.dir(job.id) / job.result_name
        if not await _blocking(path.is_file):
            raise ApiError(410, f"the result of job {job.id} is gone from the storage; submit the job again")
        # FileResponse answers Range requests and sends the file without blocking the loop.
        return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{job.download_name}"'})

    async def delete(self, request: web.Request) -> web.Response:
        job, deleted = await _blocking(self.service.delete, _job_id(request))
        if deleted:
            return web.json_response({"deleted": job.id})
        return web.json_response(job.public())


# -- helpers --------------------------------------------------------------------------------------


async def _blocking(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))


async def _every(period: float, fn: Callable[[], Any], what: str) -> None:
    """Call ``fn`` in the executor every ``period`` s; a failure is logged, the loop goes on."""
    while True:
        try:
            await _blocking(fn)
        except Exception:  # noqa: BLE001 - a background chore must not die from one failure
            log.warning("%s failed; trying again in %.1f s", what, period, exc_info=True)
        await asyncio.sleep(period)


def _job_id(request: web.Request) -> str:
    job_id = request.match_info["job"]
    if not is_job_id(job_id):
        raise ApiError(404, f"no job {job_id!r}: job ids look like j0123456789abcdef")
    return job_id


def _int_query(query: Any, key: str, default: int | None, low: int, high: int | None) -> int | None:
    if not query.get(key):
        return default
    try:
        value = int(query[key])
    except ValueError:
        raise ApiError(400, f"{key} must be a whole number") from None
    if value < low or (high is not None and value > high):
        raise ApiError(400, f"{key} must be between {low} and {high}")
    return value


#: An upload that sends nothing for this long is stalled: 408, so half-sent uploads cannot pin
#: connections (the server's request guard leaves streamed multipart bodies to this handler).
UPLOAD_IDLE_S = 30.0


async def _chunk(part: BodyPartReader) -> bytes:
    """The next chunk of ``part``; 408 when none arrives within ``UPLOAD_IDLE_S``."""
    try:
        return await asyncio.wait_for(part.read_chunk(CHUNK), UPLOAD_IDLE_S)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the upload stalled: nothing arrived for {UPLOAD_IDLE_S:.0f} s") from None


async def _read_limited(part: BodyPartReader, limit: int, what: str) -> bytes:
    data = bytearray()
    while chunk := await _chunk(part):
        data += chunk
        if len(data) > limit:
            raise ApiError(413, f"{what} is larger than {limit // 1024} kB")
    return bytes(data)


async def _stream_to_disk(part: BodyPartReader, directory: Path, name: str, limit: int) -> Upload:
    """Write one file field to ``directory/name.<sniffed ext>`` in chunks, under ``limit`` bytes."""
    head = await _chunk(part)
    if not head:
        raise ApiError(400, f"the {name} file is empty")
    kind = sniff_media(head)
    if kind is None or (name == "source" and is_video(kind)):
        what = "a face photo (JPEG, PNG or WebP)" if name == "source" else "a video (MP4, MKV, AVI) or an image"
        raise ApiError(415, f"the {name} file is not {what}")
    path = directory / (name + extension(kind))
    fh = await _blocking(open, path, "xb")
    size = 0
    try:
        chunk = head
        while chunk:
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the {name} file is larger than the limit of {limit / 1e6:.0f} MB")
            await _blocking(fh.write, chunk)
            chunk = await _chunk(part)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(exc) from None
        raise
    finally:
        await _blocking(fh.close)
    return Upload(path, kind, part.filename or name)
