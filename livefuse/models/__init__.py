"""The built-in models: manifest, store (``livefuse models pull/list``) and converters."""

from livefuse.models.store import (
    ModelSpec,
    ModelStatus,
    ModelStore,
    PackageSource,
    TensorContract,
    default_home,
    load_manifest,
)

__all__ = [
    "ModelSpec",
    "ModelStatus",
    "ModelStore",
    "PackageSource",
    "TensorContract",
    "default_home",
    "load_manifest",
]
