"""C2PA content credentials: sign what livefuse writes, and read them back.

A signed file carries a manifest saying that it is a composite with trained-algorithmic
media (a face swap), made by livefuse (name and version) with a given swapper, when, and
signed by whom. Any C2PA reader (Adobe's Content Credentials site, ``c2patool``) shows it;
``verify_file`` reads it back and says whether the file changed after signing.

Needs the ``provenance`` extra (``c2pa-python`` and ``cryptography``), imported on first use.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livefuse.errors import OutputError

log = logging.getLogger(__name__)

#: IPTC digital source type of a face swap: real footage composited with a model's output.
COMPOSITE_AI = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
#: The name livefuse signs as (``claim_generator_info`` and the actions' ``softwareAgent``).
TOOL = "livefuse"
#: How to turn credentials on when the extra is missing.
INSTALL_HINT = 'pip install "livefuse[provenance]"'
#: File suffixes C2PA can carry a manifest in, among those livefuse writes.
SIGNABLE = frozenset({".jpg", ".jpeg", ".png", ".mp4", ".mov", ".m4v", ".avi", ".webp", ".tif", ".tiff"})


class CredentialsError(OutputError):
    """Content credentials could not be made, written or read."""


def credentials_available() -> bool:
    """True when the ``provenance`` extra is installed."""
    try:
        import c2pa  # noqa: F401
        import cryptography  # noqa: F401
    except ImportError:
        return False
    return True


def _c2pa() -> Any:
    try:
        import c2pa
    except ImportError as exc:
        raise CredentialsError(f"content credentials need the provenance extra: {INSTALL_HINT}") from exc
    return c2pa


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A PEM certificate chain (leaf first) and its private key; ``alg`` in C2PA's spelling."""

    cert_pem: bytes
    key_pem: bytes
    alg: str

    @classmethod
    def load(cls, cert: Path, key: Path) -> SigningKey:
        """Read an operator's certificate chain and key, with errors that say what is wrong."""
        from livefuse.provenance.certs import algorithm_of

        try:
            cert_pem, key_pem = Path(cert).read_bytes(), Path(key).read_bytes()
        except OSError as exc:
            raise CredentialsError(
                f"cannot read the signing certificate or key ({exc}); check --sign-cert and --sign-key"
            ) from exc
        return cls(cert_pem, key_pem, algorithm_of(key_pem, key))


@dataclass(frozen=True, slots=True)
class OutputFacts:
    """What a manifest says about how a file was made."""

    swapper: str
    enhancer: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    "Further settings worth recording (no personal data: the photos are not named)."

    def manifest(self, title: str, when: dt.datetime) -> dict[str, Any]:
        """The C2PA manifest definition for a file called ``title`` made at ``when``."""
        agent = {"name": TOOL, "version": tool_version()}
        parameters = {"swapper": self.swapper, **({"enhancer": self.enhancer} if self.enhancer else {}), **self.options}
        return {
            "claim_generator_info": [agent],
            "title": title,
            "assertions": [
                {
                    "label": "c2pa.actions",
                    "data": {
                        "actions": [
                            {
                                "action": "c2pa.created",
                                "when": when.isoformat(timespec="seconds"),
                                "softwareAgent": agent,
                                "digitalSourceType": COMPOSITE_AI,
                                "description": "faces replaced by a face-swap model",
                                "parameters": parameters,
                            }
                        ]
                    },
                }
            ],
        }


def tool_version() -> str:
    """livefuse's installed version, as the manifest names it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(TOOL)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def signable(path: Path) -> bool:
    """True when ``path``'s format can carry content credentials."""
    return path.suffix.lower() in SIGNABLE


def sign_output(path: str | os.PathLike[str], facts: OutputFacts, key: SigningKey, title: str | None = None) -> None:
    """Embed signed content credentials in the file at ``path``, in place and atomically.

    ``title`` is the name the manifest gives the file (default: ``path``'s own name; a
    file signed under a temporary name passes its final one).

    The signed copy is written beside ``path`` and renamed over it: a reader sees the
    unsigned file or the signed one, never half of either. Raises ``CredentialsError``.
    """
    c2pa = _c2pa()
    path = Path(path)
    if not signable(path):
        raise CredentialsError(
            f"{path.name}: {path.suffix or 'this'} files cannot carry content credentials; "
            f"write one of {', '.join(sorted(SIGNABLE))}"
        )
    signed = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.signing{path.suffix}")
    manifest = facts.manifest(title or path.name, dt.datetime.now(dt.timezone.utc))
    try:
        info = c2pa.C2paSignerInfo(key.alg, key.cert_pem, key.key_pem, None)
        with c2pa.Signer.from_info(info) as signer, c2pa.Builder(manifest) as builder:
            builder.sign_file(str(path), str(signed), signer)
        os.replace(signed, path)
    except c2pa.C2paError as exc:
        raise CredentialsError(f"signing {path} failed: {exc}{_certificate_hint(str(exc))}") from exc
    finally:
        signed.unlink(missing_ok=True)


def _certificate_hint(message: str) -> str:
    if "certificate" not in message.lower():
        return ""
    return (
        ". C2PA needs a leaf certificate with SubjectKeyIdentifier, AuthorityKeyIdentifier, KeyUsage "
        "digitalSignature and an extended key usage such as emailProtection"
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a file's content credentials say. ``state``: valid, invalid or none."""

    path: Path
    state: str
    by_livefuse: bool = False
    "The active manifest was made by livefuse."
    trusted: bool = False
    "The signer chains to a trust anchor the reader knows (a private or self-signed one does not)."
    signer: str | None = None
    issuer: str | None = None
    signed_at: str | None = None
    timestamped: bool = False
    "``signed_at`` comes from a timestamp authority; else it is the time the signer wrote in."
    generator: str | None = None
    actions: tuple[str, ...] = ()
    "Each action as one line: what, with which tool and parameters."
    problems: tuple[str, ...] = ()
    "Why the credentials are invalid (C2PA failure codes and explanations)."

    def render(self) -> str:
        """The verdict as ``livefuse verify`` prints it."""
        if self.state == "none":
            return f"{self.path}: no content credentials"
        lines = [f"{self.path}: content credentials {self.state.upper()}"]
        if self.state == "invalid":
            lines.append("  the file was changed after it was signed, or its credentials are damaged:")
            lines += [f"    {p}" for p in self.problems]
        lines.append(f"  made by: {self.generator or 'unknown'}" + ("" if self.by_livefuse else " (not livefuse)"))
        trust = "trusted" if self.trusted else "not in a trust list (self-signed or private CA)"
        lines.append(f"  signed by: {self.signer or 'unknown'}, issuer {self.issuer or 'unknown'} ({trust})")
        source = "timestamp authority" if self.timestamped else "as stated by the signer; no timestamp authority"
        lines.append(f"  signed at: {self.signed_at} ({source})" if self.signed_at else "  signed at: unknown")
        lines += [f"  action: {a}" for a in self.actions]
        return "\n".join(lines)


def verify_file(path: str | os.PathLike[str]) -> Verdict:
    """Read and validate ``path``'s content credentials (offline; no trust list)."""
    c2pa = _c2pa()
    path = Path(path)
    if not path.is_file():
        raise CredentialsError(f"cannot verify {path}: no such file")
    try:
        reader = c2pa.Reader.try_create(str(path))
    except c2pa.C2paError.NotSupported as exc:
        raise CredentialsError(
            f"cannot verify {path}: C2PA does not read {path.suffix or 'this'} files ({exc})"
        ) from exc
    except c2pa.C2paError as exc:
        # A manifest is there but cannot be parsed: damaged counts as invalid, not absent.
        return Verdict(path, "invalid", problems=(str(exc),))
    if reader is None:
        return Verdict(path, "none")
    with reader:
        report = json.loads(reader.json())
        state = (reader.get_validation_state() or "Invalid").lower()
    return _verdict(path, report, "invalid" if state == "invalid" else "valid", trusted=state == "trusted")


def _verdict(path: Path, report: dict[str, Any], state: str, trusted: bool) -> Verdict:
    manifest = report.get("manifests", {}).get(report.get("active_manifest"), {})
    generator: dict[str, Any] = next(iter(manifest.get("claim_generator_info") or []), {})
    signature = manifest.get("signature_info") or {}
    actions = [
        a
        for assertion in manifest.get("assertions", [])
        if assertion.get("label", "").startswith("c2pa.actions")
        for a in assertion.get("data", {}).get("actions", [])
    ]
    statuses = report.get("validation_status") or []
    problems = tuple(
        f"{s.get('code')}: {s.get('explanation', '')}"
        for s in statuses
        if s.get("code") != "signingCredential.untrusted"
    )
    return Verdict(
        path=path,
        state=state,
        by_livefuse=generator.get("name") == TOOL,
        trusted=trusted,
        signer=signature.get("common_name"),
        issuer=signature.get("issuer"),
        signed_at=signature.get("time") or next((a.get("when") for a in actions if a.get("when")), None),
        timestamped=bool(signature.get("time")),
        generator=" ".join(str(generator[k]) for k in ("name", "version") if k in generator) or None,
        actions=tuple(_describe(a) for a in actions),
        problems=problems,
    )


def _describe(action: dict[str, Any]) -> str:
    agent = action.get("softwareAgent")
    agent_name = agent.get("name") if isinstance(agent, dict) else agent
    source = str(action.get("digitalSourceType", "")).rsplit("/", 1)[-1]
    parameters = ", ".join(f"{k}={v}" for k, v in (action.get("parameters") or {}).items())
    parts = [
        str(action.get("action")),
        f"by {agent_name}" if agent_name else "",
        f"({source})" if source else "",
        f"[{parameters}]" if parameters else "",
    ]
    return " ".join(p for p in parts if p)
