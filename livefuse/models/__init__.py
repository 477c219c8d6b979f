"""Models: manifest, store (``livefuse models pull/add/list``), downloads, converters."""

from livefuse.models.contracts import check_contract, load_emap
from livefuse.models.download import HttpOptions
from livefuse.models.files import default_home
from livefuse.models.manifest import (
    IoSpec,
    ModelSpec,
    ModelStatus,
    PackageSource,
    TensorContract,
    UrlSource,
    load_manifest,
    load_templates,
)
from livefuse.models.store import LocalRecord, ModelStore

__all__ = [
    "HttpOptions",
    "IoSpec",
    "LocalRecord",
    "ModelSpec",
    "ModelStatus",
    "ModelStore",
    "PackageSource",
    "TensorContract",
    "UrlSource",
    "check_contract",
    "default_home",
    "load_emap",
    "load_manifest",
    "load_templates",
]
