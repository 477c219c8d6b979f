"""The one place that reads the safeguards' settings, and builds what ``run``/``cam`` use."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from livefuse.config import Settings
from livefuse.errors import ConfigError
from livefuse.provenance import DEFAULT_LABEL
from livefuse.provenance.credentials import (
    INSTALL_HINT,
    OutputFacts,
    SigningKey,
    credentials_available,
    sign_output,
    signable,
)
from livefuse.provenance.label import LabelSink
from livefuse.state import state_dir

log = logging.getLogger(__name__)

#: Swap settings recorded in a file's credentials besides the swapper (none name a person or a photo).
RECORDED = ("faces", "masks", "keep_mouth", "opacity", "sharpness")


@dataclass(frozen=True, slots=True)
class ProvenanceOptions:
    """What the settings ask of the safeguards."""

    credentials: bool
    sign_cert: Path | None
    sign_key: Path | None
    label: str | None
    state: Path
    "Where the self-signed certificate is made and kept."


def provenance_options(settings: Settings) -> ProvenanceOptions:
    """The safeguards' part of ``settings`` (checked: a certificate needs its key)."""
    safeguards = settings.safeguards
    cert, key = safeguards.sign_cert, safeguards.sign_key
    if (cert is None) != (key is None):
        raise ConfigError("--sign-cert and --sign-key go together: give both (certificate chain PEM and its key)")
    return ProvenanceOptions(safeguards.credentials, cert, key, safeguards.label or None, state_dir(settings))


def output_facts(settings: Settings) -> OutputFacts:
    """What a file made with ``settings`` says about itself."""
    swap = settings.swap
    recorded = {k: sorted(v) if isinstance(v, frozenset) else v for k in RECORDED for v in [getattr(swap, k)]}
    return OutputFacts(swap.swapper, swap.enhancer, {**recorded, "detector": settings.analysis.detector})


def signing_key(options: ProvenanceOptions) -> SigningKey:
    """The operator's key when given, else this installation's self-signed one."""
    from livefuse.provenance.certs import self_signed_key

    if options.sign_cert is not None and options.sign_key is not None:
        return SigningKey.load(options.sign_cert, options.sign_key)
    return self_signed_key(options.state)


def file_sealer(settings: Settings) -> Callable[[Path, Path], None] | None:
    """What signs each finished output file, or None (with a warning that says why).

    Loads the key now, so a bad certificate stops a run before any work, not after it.
    """
    options = provenance_options(settings)
    if not options.credentials:
        log.warning("content credentials are off (--no-credentials): outputs will not say they are AI-made")
        return None
    if not credentials_available():
        log.warning("outputs carry no content credentials: the provenance extra is missing (%s)", INSTALL_HINT)
        return None
    key, facts = signing_key(options), output_facts(settings)

    def seal(path: Path, final: Path) -> None:
        if not signable(path):
            log.warning("%s cannot carry content credentials: write .mp4 or .mov to have them", final)
            return
        sign_output(path, facts, key, title=final.name)

    return seal


def label_sink(settings: Settings, force: bool = False) -> LabelSink | None:
    """The live label the settings ask for (``force``: even when they do not), else None."""
    text = provenance_options(settings).label
    if text is None and not force:
        return None
    return LabelSink(text or DEFAULT_LABEL)
