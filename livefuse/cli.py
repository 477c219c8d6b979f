"""The ``livefuse`` command. The only module that parses arguments or picks exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

from livefuse.config import (
    OPTIONS,
    DetectorName,
    FaceMode,
    FramePath,
    MaskName,
    MaskStyle,
    RuntimeName,
    Settings,
    VideoCodecChoice,
    integer,
    load_settings,
    number,
)
from livefuse.errors import ConfigError, LivefuseError
from livefuse.provenance import DEFAULT_LABEL
from livefuse.signals import exit_code, interrupt_behind, interrupts_raise

log = logging.getLogger("livefuse")

#: Settings that every swapping command takes, as (flag, option, argparse kwargs). No ``type``:
#: values are parsed and range-checked once, by ``load_settings``, whatever their origin.
_SWAP_OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("--source", "source", {"metavar": "FACE.jpg", "help": "photo of the face to put onto people"}),
    ("--swapper", "swapper", {"metavar": "MODEL", "help": "mesh (built in) or inswapper_128, hyperswap_1a_256, …"}),
    ("--enhancer", "enhancer", {"metavar": "MODEL", "help": "face enhancer: gfpgan_1.4, gpen_bfr_256, gpen_bfr_512"}),
    ("--enhance-every", "enhance_every", {"metavar": "N", "help": "enhance each face every N frames (4)"}),
    ("--enhance-strength", "enhance_strength", {"help": "0..1 blend of the enhanced face (0.8)"}),
    ("--mask", "mask", {"metavar": "LIST", "help": f"extra masks: {','.join(get_args(MaskName))}"}),
    ("--mask-style", "mask_style", {"choices": get_args(MaskStyle), "help": "neural paste mask (face)"}),
    ("--faces", "faces", {"choices": get_args(FaceMode), "help": "which faces to swap (many)"}),
    ("--map", "map", {"action": "append", "metavar": "REF.jpg=SRC.jpg", "help": "map mode: REF's face gets SRC's"}),
    ("--map-threshold", "map_threshold", {"help": "map mode: similarity needed, -1..1 (0.35)"}),
    ("--sharpness", "sharpness", {"help": "sharpen the swapped face, 0..4 (0)"}),
    ("--keep-mouth", "keep_mouth", {"action": "store_const", "const": True, "help": "keep the target's own mouth"}),
    ("--opacity", "opacity", {"help": "0..1, how fully the face is replaced (1)"}),
    (
        "--shape-transfer",
        "shape_transfer",
        {"metavar": "S", "help": "mesh swapper: 0..1, how far eyes, nose, mouth take the source's proportions (0.8)"},
    ),
    ("--no-colour", "colour", {"action": "store_const", "const": False, "help": "skip colour/lighting matching"}),
    ("--detector", "detector", {"choices": get_args(DetectorName), "help": "face detector (centerface: built in)"}),
    ("--detect-every", "detect_every", {"metavar": "K", "help": "run the detector every K frames, 1..1000 (10)"}),
    (
        "--detect-size",
        "detect_size",
        {"metavar": "PX", "help": "detector input size, longest side, a multiple of 32 (640)"},
    ),
    ("--max-faces", "max_faces", {"help": "most faces swapped per frame, 1..64 (8)"}),
    ("--no-smooth", "smooth", {"action": "store_const", "const": False, "help": "no landmark smoothing"}),
    ("--threads", "threads", {"help": "ONNX Runtime threads per model, 0 (its choice)..256 (1)"}),
    ("--providers", "providers", {"help": "comma-separated ONNX Runtime providers to try first"}),
    (
        "--frame-path",
        "frame_path",
        {"choices": get_args(FramePath), "help": "gpu: keep frames on the GPU for neural swaps (TensorRT) (cpu)"},
    ),
    (
        "--runtime",
        "runtime",
        {
            "choices": get_args(RuntimeName),
            "help": "what runs the models: auto (the best this machine has), cpu, "
            "cuda (ONNX Runtime), torch or tensorrt (auto)",
        },
    ),
    (
        "--vram-budget",
        "vram_budget",
        {"metavar": "SIZE", "help": "GPU memory each model may use, e.g. 6GiB or 6000MB (0: no limit)"},
    ),
    ("--home", "home", {"metavar": "DIR", "help": "models and samples directory"}),
]


#: Content credentials on output files (run, demo, cam --record).
_CREDENTIAL_OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "--no-credentials",
        "credentials",
        {"action": "store_const", "const": False, "help": "write files without C2PA content credentials"},
    ),
    (
        "--sign-cert",
        "sign_cert",
        {
            "metavar": "CERT.pem",
            "help": "certificate chain to sign outputs with (default: a self-signed one in the home)",
        },
    ),
    ("--sign-key", "sign_key", {"metavar": "KEY.pem", "help": "the private key of --sign-cert"}),
]
_LABEL_OPTION = (
    "--label",
    "label",
    {
        "nargs": "?",
        "const": DEFAULT_LABEL,
        "metavar": "TEXT",
        "help": f"draw a visible label on the output ('{DEFAULT_LABEL}')",
    },
)


def _add_swap_options(parser: argparse.ArgumentParser, *extra: tuple[str, str, dict[str, Any]]) -> None:
    for flag, key, kwargs in [*_SWAP_OPTIONS, *extra]:
        parser.add_argument(flag, dest=key, default=None, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livefuse", description="Real-time face swap for live video.")
    parser.add_argument("--config", type=Path, help="TOML config file (options as keys)")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="-v: say what happens (INFO), -vv: debug logging"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    cam = commands.add_parser("cam", help="swap faces live from a camera or stream")
    _add_swap_options(cam, *_CREDENTIAL_OPTIONS, _LABEL_OPTION)
    cam.add_argument("--camera", default=None, help="camera index, device path or rtsp/http URL (0)")
    cam.add_argument("--size", default=None, metavar="WxH", help="requested capture size, e.g. 1280x720")
    cam.add_argument("--fps", default=None, help="requested capture rate")
    cam.add_argument("--vcam", action="store_const", const=True, default=None, help="send to a virtual camera")
    cam.add_argument("--vcam-device", dest="vcam_device", default=None, help="virtual camera (Linux: /dev/videoN)")
    cam.add_argument("--vcam-backend", dest="vcam_backend", default=None, help="v4l2loopback, obs or unitycapture")
    cam.add_argument("--preview", action="store_const", const=True, default=None, help="show a preview window")
    cam.add_argument("--record", type=Path, default=None, metavar="OUT.mp4", help="also write the output to a file")
    cam.add_argument(
        "--seconds", type=_ranged(number(0, 604800, above=True)), default=None, help="stop after this many seconds"
    )
    cam.add_argument(
        "--reconnect-for",
        dest="reconnect_for",
        default=None,
        metavar="SECONDS",
        help="keep reopening a camera or stream that drops for this long (30; 0: end at once)",
    )

    run = commands.add_parser("run", help="swap faces in a video or image file")
    _add_swap_options(run, *_CREDENTIAL_OPTIONS)
    run.add_argument("--input", required=True, help="video file, image or rtsp/http URL")
    run.add_argument(
        "--output",
        required=True,
        type=Path,
        help="output file: a video (.mp4, .mkv, .mov) or, for an image input, an image (.jpg, .png, .webp)",
    )
    run.add_argument("--live", action="store_true", help="treat a URL input as a live stream (drop late frames)")

    demo = commands.add_parser("demo", help="pull what is needed and run on the sample clip")
    _add_swap_options(demo, *_CREDENTIAL_OPTIONS)
    demo.add_argument("--output", type=Path, default=Path("livefuse-demo"), help="output directory")

    models = commands.add_parser("models", help="install and list models")
    models_cmd = models.add_subparsers(dest="action", required=True)
    pull = models_cmd.add_parser("pull", help="install the built-in models, or the named ones")
    pull.add_argument("names", nargs="*", metavar="NAME", help="models to install (default: the built-in set)")
    pull.add_argument("--from", dest="from_dir", type=Path, help="install from files in DIR (offline)")
    pull.add_argument("--home", default=None)
    add = models_cmd.add_parser("add", help="register a model file you already have")
    add.add_argument("name", metavar="NAME", help="manifest name, e.g. inswapper_128")
    add.add_argument("path", type=Path, metavar="PATH", help="the .onnx file")
    add.add_argument("--home", default=None)
    listing = models_cmd.add_parser("list", help="show installed models")
    listing.add_argument("--home", default=None)

    samples = commands.add_parser("samples", help="get the sample portraits and demo clip")
    samples_cmd = samples.add_subparsers(dest="action", required=True)
    spull = samples_cmd.add_parser("pull", help="get the sample media")
    spull.add_argument("--from", dest="from_dir", type=Path, help="install from files in DIR (offline)")
    spull.add_argument("--home", default=None)

    serve = commands.add_parser("serve", help="web demo page, WHIP ingest and OBS viewers (WebRTC)")
    _add_swap_options(serve, _LABEL_OPTION)
    serve.add_argument(
        "--force-label",
        dest="force_label",
        action="store_true",
        help=f"label every session's output (--label's text, else '{DEFAULT_LABEL}')",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1); others need a token")
    serve.add_argument(
        "--port", type=_ranged(integer(0, 65535)), default=8080, help="TCP port (8080; 0 picks a free one)"
    )
    serve.add_argument("--token", default=None, help="access token (generated and printed when --host is not local)")
    serve.add_argument(
        "--max-sessions",
        dest="max_sessions",
        type=_ranged(integer(1, 64)),
        default=4,
        help="concurrent streams, 1..64 (4)",
    )
    serve.add_argument(
        "--video-codec",
        dest="video_codec",
        choices=get_args(VideoCodecChoice),
        default="auto",
        help="codec preferred with browsers (auto: H.264, in hardware where NVENC/QSV/AMF/VideoToolbox opens)",
    )
    serve.add_argument(
        "--no-hardware-encoder",
        dest="hardware_encoder",
        action="store_false",
        help="encode in software even where NVENC, Quick Sync, AMF or VideoToolbox would open",
    )
    serve.add_argument("--vcam", action="store_const", const=True, default=None, help="also send to a virtual camera")
    serve.add_argument("--vcam-device", dest="vcam_device", default=None, help="virtual camera (Linux: /dev/videoN)")
    serve.add_argument("--vcam-backend", dest="vcam_backend", default=None, help="v4l2loopback, obs or unitycapture")

    _add_job_commands(commands, serve)

    doctor = commands.add_parser("doctor", help="check the GPU, driver, runtimes and engines; say what to fix")
    doctor.add_argument("--home", default=None, help="models and samples directory")
    doctor.add_argument("--engines", type=Path, default=None, metavar="DIR", help="TensorRT engines (HOME/engines)")
    doctor.add_argument("--no-probe", dest="probe", action="store_false", help="skip the pinned-memory bandwidth probe")

    verify = commands.add_parser(
        "verify", help="check a file's content credentials (exit 0 valid, 1 none, 2 invalid, 3 cannot check)"
    )
    verify.add_argument("file", type=Path, metavar="FILE", help="an image or video livefuse wrote")

    audit = commands.add_parser("audit", help="show or check the audit log of runs and sessions")
    audit.add_argument("--since", metavar="DATE", help="only records from DATE on (2026-12-01 or 2026-12-01T08:30)")
    audit.add_argument("--json", action="store_true", help="print the records as JSON")
    audit.add_argument("--verify", action="store_true", help="check the hash chain (exit 2 when broken)")
    audit.add_argument("--home", default=None, help="models and samples directory (where the log lives)")
    return parser


def _add_job_commands(commands: Any, serve: argparse.ArgumentParser) -> None:
    """The job service's options on ``serve``, and the ``jobs``, ``worker`` and ``gateway`` commands."""
    serve.add_argument("--job-workers", type=int, default=1, metavar="N", help="job worker threads (1)")
    serve.add_argument(
        "--queue",
        default=None,
        metavar="redis://HOST:6379/0",
        help="send jobs to 'livefuse worker' processes through Redis instead",
    )
    serve.add_argument(
        "--storage",
        type=Path,
        default=None,
        metavar="DIR",
        help="job files (HOME/jobs/files); with --queue, a directory the workers share",
    )
    serve.add_argument("--job-db", type=Path, default=None, metavar="FILE", help="job table (HOME/jobs/jobs.sqlite3)")
    serve.add_argument("--max-job-upload", default="2GB", metavar="SIZE", help="largest video per job (2GB)")
    serve.add_argument("--job-quota", default=None, metavar="SIZE", help="most space all jobs may take (none)")
    serve.add_argument(
        "--advertise",
        default=None,
        metavar="URL",
        help="with --queue: the address the gateway reaches this server at (http://HOST:PORT)",
    )
    serve.add_argument(
        "--job-retention", type=float, default=24.0, metavar="HOURS", help="how long finished jobs are kept (24)"
    )

    jobs = commands.add_parser("jobs", help="submit, follow, cancel and fetch jobs on a livefuse server")
    jobs_cmd = jobs.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default="http://127.0.0.1:8080", help="the server (http://127.0.0.1:8080)")
    common.add_argument("--token", default=None, help="the server's access token")
    submit = jobs_cmd.add_parser("submit", parents=[common], help="upload a face and a video/image as a job")
    submit.add_argument("--source", dest="source_photo", type=Path, required=True, metavar="FACE.jpg")
    submit.add_argument("--input", type=Path, required=True, help="the video or image to swap faces in")
    submit.add_argument("--option", action="append", metavar="KEY=VALUE", help="a swap option, e.g. keep_mouth=true")
    submit.add_argument("--output", type=Path, default=None, help="wait, then download the result here")
    submit.add_argument("--wait", action="store_true", help="wait for the job, showing its progress")
    listing = jobs_cmd.add_parser("list", parents=[common], help="the newest jobs")
    listing.add_argument("--state", default=None, choices=["queued", "running", "succeeded", "failed", "cancelled"])
    listing.add_argument("--limit", type=int, default=50)
    for name, text in (("show", "one job"), ("wait", "wait for a job"), ("cancel", "cancel or delete a job")):
        action = jobs_cmd.add_parser(name, parents=[common], help=text)
        action.add_argument("id", metavar="ID")
        if name == "wait":
            action.add_argument("--output", "-o", type=Path, default=None, help="then download the result here")
    fetch = jobs_cmd.add_parser("fetch", parents=[common], help="download a job's result")
    fetch.add_argument("id", metavar="ID")
    fetch.add_argument("--output", "-o", type=Path, required=True)

    worker = commands.add_parser("worker", help="run jobs from a Redis queue (models kept warm)")
    _add_swap_options(worker)
    worker.add_argument("--queue", required=True, metavar="redis://HOST:6379/0", help="the server's Redis")
    worker.add_argument("--storage", type=Path, required=True, metavar="DIR", help="the job files the server shares")
    worker.add_argument("--gpu", type=int, default=None, metavar="N", help="the GPU this worker uses (one per GPU)")
    worker.add_argument("--burst", action="store_true", help="quit when the queue is empty")

    gateway = commands.add_parser("gateway", help="one address in front of several 'serve --queue' workers")
    gateway.add_argument("--queue", required=True, metavar="redis://HOST:6379/0", help="the workers' Redis")
    gateway.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    gateway.add_argument("--port", type=int, default=8000, help="TCP port (8000; 0 picks a free one)")
    gateway.add_argument("--token", default=None, help="the access token (the workers' token)")


def _ranged(parse: Callable[[Any], Any]) -> Callable[[str], Any]:
    """A command's own (non-settings) value, checked with the settings' parsers."""

    def check(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text}: {exc}") from None

    return check


def _settings(args: argparse.Namespace) -> Settings:
    cli = {k: v for k, v in vars(args).items() if k in OPTIONS and v is not None}
    return load_settings(cli, config=args.config)


#: Commands that run for hours as services: their log is their record (sessions and jobs
#: opened and closed), so they log INFO unless told otherwise.
_SERVICES = frozenset({"serve", "worker", "gateway"})


def _log_level(verbose: int, configured: str | None, command: str = "") -> int | str:
    """Quiet by default (warnings and errors; the progress line and summary are not logs),
    ``-v`` INFO, ``-vv`` DEBUG; ``log_level`` from the config or environment otherwise.
    Services (``serve``, ``worker``, ``gateway``) log INFO: their log is their record."""
    if verbose:
        return logging.DEBUG if verbose > 1 else logging.INFO
    if command in _SERVICES and (configured or "WARNING").upper() == "WARNING":
        return logging.INFO
    return configured.upper() if configured else logging.WARNING


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Returns the exit code: 0 ok, 1 a livefuse error, 2 usage, 128 + signal number
    when stopped by Ctrl-C (130), SIGTERM (143) or SIGHUP (129)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=_log_level(args.verbose, None, args.command),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from livefuse import commands, job_commands
    from livefuse.container.process import stop_on_sigterm

    stop_on_sigterm()  # as a container's PID 1, SIGTERM would otherwise be ignored

    handlers: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
        "cam": commands.cam,
        "run": commands.run,
        "demo": commands.demo,
        "models": commands.models,
        "samples": commands.samples,
        "serve": commands.serve,
        "doctor": commands.doctor,
        "verify": commands.verify,
        "audit": commands.audit,
        "jobs": job_commands.jobs,
        "worker": job_commands.worker,
        "gateway": job_commands.gateway,
    }
    try:
        with interrupts_raise():
            settings = _settings(args)
            logging.getLogger().setLevel(_log_level(args.verbose, settings.log_level, args.command))
            return handlers[args.command](args, settings)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except LivefuseError as exc:
        log.error("%s", exc)
        return 1
    except (KeyboardInterrupt, ImportError) as exc:
        stop = interrupt_behind(exc)
        if stop is None:  # a real ImportError
            raise
        log.warning("interrupted (%s)", getattr(stop, "name", "SIGINT"))
        return exit_code(stop)
    except BrokenPipeError:
        # The reader went away (``livefuse models list | head``): end quietly. stdout points at
        # /dev/null from here on, so Python's final flush cannot fail with a traceback either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
