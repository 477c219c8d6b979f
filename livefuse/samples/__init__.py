"""Sample media: the store of public portraits, and the demo clip rendered from them."""

from livefuse.samples.demo import ClipFace, ClipSegment, DemoClip, make_demo_clip
from livefuse.samples.store import SampleSpec, SampleStore, load_catalog

__all__ = ["ClipFace", "ClipSegment", "DemoClip", "SampleSpec", "SampleStore", "load_catalog", "make_demo_clip"]
