"""The ``livefuse`` command. The only module that parses arguments or picks exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from livefuse.config import Settings, load_settings
from livefuse.errors import ConfigError, LivefuseError
from livefuse.signals import exit_code, interrupts_raise

log = logging.getLogger("livefuse")

#: Settings that every swapping command takes, as (flag, settings key, argparse kwargs).
_SWAP_OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("--source", "source", {"metavar": "FACE.jpg", "help": "photo of the face to put onto people"}),
    ("--swapper", "swapper", {"metavar": "MODEL", "help": "mesh (built in) or inswapper_128, hyperswap_1a_256, …"}),
    ("--enhancer", "enhancer", {"metavar": "MODEL", "help": "face enhancer: gfpgan_1.4, gpen_bfr_256, gpen_bfr_512"}),
    ("--enhance-every", "enhance_every", {"type": int, "metavar": "N", "help": "enhance each face every N frames (4)"}),
    ("--enhance-strength", "enhance_strength", {"type": float, "help": "0..1 blend of the enhanced face (0.8)"}),
    ("--mask", "mask", {"metavar": "LIST", "help": "extra masks: occlusion,parser,mouth"}),
    ("--faces", "faces", {"choices": ["one", "many", "map"], "help": "which faces to swap (many)"}),
    ("--map", "map", {"action": "append", "metavar": "REF.jpg=SRC.jpg", "help": "map mode: REF's face gets SRC's"}),
    ("--map-threshold", "map_threshold", {"type": float, "help": "map mode: similarity needed (0.35)"}),
    ("--sharpness", "sharpness", {"type": float, "help": "sharpen the swapped face, 0..1 (0)"}),
    ("--keep-mouth", "keep_mouth", {"action": "store_const", "const": True, "help": "keep the target's own mouth"}),
    ("--opacity", "opacity", {"type": float, "help": "0..1, how fully the face is replaced (1)"}),
    ("--no-colour", "colour", {"action": "store_const", "const": False, "help": "skip colour/lighting matching"}),
    ("--detector", "detector", {"metavar": "MODEL", "help": "centerface (built in), scrfd_det_10g or yunet_2023mar"}),
    ("--detect-every", "detect_every", {"type": int, "metavar": "K", "help": "run the detector every K frames (10)"}),
    ("--detect-size", "detect_size", {"type": int, "metavar": "PX", "help": "detector input size, longest side (640)"}),
    ("--max-faces", "max_faces", {"type": int, "help": "most faces swapped per frame (8)"}),
    ("--no-smooth", "smooth", {"action": "store_const", "const": False, "help": "no landmark smoothing"}),
    ("--threads", "threads", {"type": int, "help": "ONNX Runtime threads per model (1)"}),
    ("--providers", "providers", {"help": "comma-separated ONNX Runtime providers to try first"}),
    ("--frame-path", "frame_path", {"choices": ["cpu", "gpu"],
                                    "help": "gpu: keep frames on the GPU for neural swaps (TensorRT) (cpu)"}),
    ("--runtime", "runtime", {"choices": ["auto", "cpu", "cuda", "torch", "tensorrt"],
                              "help": "what runs the models: auto (the best this machine has), cpu, "
                                      "cuda (ONNX Runtime), torch or tensorrt (auto)"}),
    ("--vram-budget", "vram_budget", {"metavar": "SIZE",
                                      "help": "GPU memory each model may use, e.g. 6GiB or 6000MB (0: no limit)"}),
    ("--home", "home", {"metavar": "DIR", "help": "models and samples directory"}),
]


def _add_swap_options(parser: argparse.ArgumentParser) -> None:
    for flag, key, kwargs in _SWAP_OPTIONS:
        parser.add_argument(flag, dest=key, default=None, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livefuse", description="Real-time face swap for live video.")
    parser.add_argument("--config", type=Path, help="TOML config file (options as keys)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="-v: say what happens (INFO), -vv: debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    cam = commands.add_parser("cam", help="swap faces live from a camera or stream")
    _add_swap_options(cam)
    cam.add_argument("--camera", default=None, help="camera index, device path or rtsp/http URL (0)")
    cam.add_argument("--size", default=None, metavar="WxH", help="requested capture size, e.g. 1280x720")
    cam.add_argument("--fps", type=float, default=None, help="requested capture rate")
    cam.add_argument("--vcam", action="store_const", const=True, default=None, help="send to a virtual camera")
    cam.add_argument("--vcam-device", dest="vcam_device", default=None, help="virtual camera (Linux: /dev/videoN)")
    cam.add_argument("--vcam-backend", dest="vcam_backend", default=None, help="v4l2loopback, obs or unitycapture")
    cam.add_argument("--preview", action="store_const", const=True, default=None, help="show a preview window")
    cam.add_argument("--record", type=Path, default=None, metavar="OUT.mp4", help="also write the output to a file")
    cam.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    cam.add_argument("--reconnect-for", dest="reconnect_for", type=float, default=None, metavar="SECONDS",
                     help="keep reopening a camera or stream that drops for this long (30; 0: end at once)")

    run = commands.add_parser("run", help="swap faces in a video or image file")
    _add_swap_options(run)
    run.add_argument("--input", required=True, help="video file, image or rtsp/http URL")
    run.add_argument("--output", required=True, type=Path,
                     help="output file: a video (.mp4, .mkv, .mov) or, for an image input, an image (.jpg, .png, .webp)")
    run.add_argument("--live", action="store_true", help="treat a URL input as a live stream (drop late frames)")

    demo = commands.add_parser("demo", help="pull what is needed and run on the sample clip")
    _add_swap_options(demo)
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
    _add_swap_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1); others need a token")
    serve.add_argument("--port", type=int, default=8080, help="TCP port (8080; 0 picks a free one)")
    serve.add_argument("--token", default=None, help="access token (generated and printed when --host is not local)")
    serve.add_argument("--max-sessions", dest="max_sessions", type=int, default=4, help="concurrent streams (4)")
    serve.add_argument("--vcam", action="store_const", const=True, default=None, help="also send to a virtual camera")
    serve.add_argument("--vcam-device", dest="vcam_device", default=None, help="virtual camera (Linux: /dev/videoN)")
    serve.add_argument("--vcam-backend", dest="vcam_backend", default=None, help="v4l2loopback, obs or unitycapture")

    doctor = commands.add_parser("doctor", help="check the GPU, driver, runtimes and engines; say what to fix")
    doctor.add_argument("--home", default=None, help="models and samples directory")
    doctor.add_argument("--engines", type=Path, default=None, metavar="DIR", help="TensorRT engines (HOME/engines)")
    doctor.add_argument("--no-probe", dest="probe", action="store_false", help="skip the pinned-memory bandwidth probe")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    known = set(Settings.__dataclass_fields__)
    cli = {k: v for k, v in vars(args).items() if k in known and v is not None}
    if isinstance(cli.get("map"), list):
        cli["map"] = ",".join(cli["map"])
    return load_settings(cli, config=args.config)


def _log_level(verbose: int, configured: str | None, command: str = "") -> int | str:
    """Quiet by default (warnings and errors; the progress line and summary are not logs),
    ``-v`` INFO, ``-vv`` DEBUG; ``log_level`` from the config or environment otherwise.
    ``serve`` runs for hours and its log is its record (sessions opened and closed): INFO."""
    if verbose:
        return logging.DEBUG if verbose > 1 else logging.INFO
    if command == "serve" and (configured or "WARNING").upper() == "WARNING":
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
    from livefuse import commands

    handlers: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
        "cam": commands.cam,
        "run": commands.run,
        "demo": commands.demo,
        "models": commands.models,
        "samples": commands.samples,
        "serve": commands.serve,
        "doctor": commands.doctor,
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
    except KeyboardInterrupt as exc:
        log.warning("interrupted (%s)", getattr(exc, "name", "SIGINT"))
        return exit_code(exc)
