"""What ``livefuse jobs …`` (a client of a running server), ``livefuse worker`` and
``livefuse gateway`` do. Returns exit codes; never exits."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from livefuse.config import Settings
from livefuse.errors import ConfigError
from livefuse.jobs.client import JobsClient
from livefuse.jobs.options import normalise_options
from livefuse.progress import ProgressLine


def parse_option(text: str) -> tuple[str, Any]:
    """``k=v`` from ``--option``: v as JSON when it parses (true, 0.5), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--option {text!r} is not KEY=VALUE, e.g. --option keep_mouth=true")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def jobs(args: argparse.Namespace, settings: Settings) -> int:
    client = JobsClient(args.server, args.token)
    action = args.action
    if action == "submit":
        options = normalise_options(dict(parse_option(o) for o in args.option or []))
        job = client.submit(args.source_photo, args.input, options)
        print(job["id"], flush=True)
        if args.wait or args.output:
            return _wait_and_fetch(client, job["id"], args.output)
        return 0
    if action == "list":
        listing = client.list(args.state, args.limit)
        for job in listing["jobs"]:
            print(_line(job))
        return 0
    if action == "show":
        print(json.dumps(client.get(args.id), indent=2))
        return 0
    if action == "wait":
        return _wait_and_fetch(client, args.id, args.output)
    if action == "cancel":
        return _cancel(client, args.id)
    if action == "fetch":
        print(client.fetch(args.id, args.output))
        return 0
    raise ConfigError(f"unknown jobs action {action!r}")


def _cancel(client: JobsClient, job_id: str) -> int:
    answer = client.delete(job_id)
    print(f"{job_id} deleted" if "deleted" in answer else _line(answer))
    return 0


def _line(job: dict[str, Any]) -> str:
    p = job["progress"]
    total = p["total"] if p["total"] is not None else "?"
    error = f"  {job['error']}" if job.get("error") else ""
    return f"{job['id']}  {job['state']:<9} {p['done']}/{total} frames{error}"


def _wait_and_fetch(client: JobsClient, job_id: str, output: Path | None) -> int:
    """Follow the job's events with a progress bar; download the result when it succeeded."""
    job = client.get(job_id)
    with ProgressLine(f"job {job_id}", job["progress"]["total"]) as line:
        for _event, job in client.events(job_id):
            if job["state"] == "running":
                line.set(job["progress"]["done"], job["progress"]["total"])
    if job["state"] != "succeeded":
        print(_line(job), file=sys.stderr)
        return 1
    if output is not None:
        print(client.fetch(job_id, output))
    else:
        print(_line(job))
    return 0


def worker(args: argparse.Namespace, settings: Settings) -> int:
    """``livefuse worker``: run jobs from the Redis queue with the models kept warm."""
    from livefuse.jobs.setup import need_redis

    need_redis()
    from livefuse.jobs.files import JobFiles
    from livefuse.jobs.rqueue import run_worker

    if args.gpu is not None:
        if args.gpu < 0:
            raise ConfigError(f"--gpu {args.gpu} is not a GPU index (0, 1, …)")
        # Before any CUDA library loads: this process sees only its GPU, as device 0.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    if not args.storage.is_dir():
        raise ConfigError(f"--storage {args.storage} is not a directory; mount the share the server uses")
    return run_worker(args.queue, JobFiles(args.storage), settings, burst=args.burst)


def gateway(args: argparse.Namespace, settings: Settings) -> int:
    """``livefuse gateway``: one public address routing live sessions to registered workers."""
    from livefuse.jobs.setup import need_redis

    need_redis()
    from livefuse.cluster.gateway import GatewayConfig, run_gateway

    return run_gateway(GatewayConfig(host=args.host, port=args.port, token=args.token, queue=args.queue))
