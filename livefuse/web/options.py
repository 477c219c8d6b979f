"""What sessions are made with: the server's limits, a new session's options, and the
faces and models a session may choose from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livefuse.web.encoders import SOFTWARE, EncoderChoice
from livefuse.web.errors import ApiError
from livefuse.web.uploads import ImageLimits


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """How many sessions and viewers the server takes, and when it closes idle ones."""

    max_sessions: int = 4
    max_viewers: int = 4
    "WHEP viewers per session (the demo page's own returned stream is not counted)."
    idle_timeout_s: float = 30.0
    "A session that receives no video for this long is closed."
    ice_servers: tuple[str, ...] = ()
    image: ImageLimits = ImageLimits()
    encoders: EncoderChoice = SOFTWARE
    "The codec preferred and the encoders of the returned stream (``encoders.choose_encoder``)."


@dataclass(frozen=True, slots=True)
class StartOptions:
    """What a new session starts with; None takes the server's default."""

    face: str | None = None
    swap: bool = True
    choices: dict[str, Any] = field(default_factory=dict)
    "Session settings (``controls.SESSION_SETTINGS``) that differ from the server's."
    size: tuple[int, int] | None = None
    "The size the session works at; None takes the first frame's."


@dataclass(frozen=True, slots=True)
class Choices:
    """What sessions may choose from: faces by name, and the installed models."""

    faces: dict[str, Path] = field(default_factory=dict)
    "Face name → photo; the first is the default."
    swappers: tuple[str, ...] = ("mesh",)
    enhancers: tuple[str, ...] = ()
    masks: tuple[str, ...] = ("mouth",)

    def public(self) -> dict[str, Any]:
        """The choices as the page lists them."""
        return {
            "faces": list(self.faces),
            "default_face": next(iter(self.faces), None),
            "swappers": list(self.swappers),
            "enhancers": list(self.enhancers),
            "masks": list(self.masks),
        }

    def check(self, choices: dict[str, Any]) -> dict[str, Any]:
        """``choices`` if each names something installed; else ``ApiError`` 400 listing what is."""
        swapper, enhancer = choices.get("swapper"), choices.get("enhancer")
        if swapper is not None and swapper not in self.swappers:
            raise ApiError(400, f"swapper {swapper!r} is not installed; choose one of {', '.join(self.swappers)}")
        if enhancer is not None and enhancer not in self.enhancers:
            have = ", ".join(self.enhancers) or "none installed ('livefuse models pull gfpgan_1.4' adds one)"
            raise ApiError(400, f"enhancer {enhancer!r} is not installed; the enhancers: {have}")
        masks = [m for m in str(choices.get("mask") or "").split(",") if m]
        unknown = sorted(set(masks) - set(self.masks))
        if unknown:
            raise ApiError(400, f"mask(s) {', '.join(unknown)} not available; choose from {', '.join(self.masks)}")
        return choices
