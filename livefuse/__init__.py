"""livefuse: real-time face swap for live video."""

from livefuse.errors import LivefuseError
from livefuse.faces import Faces
from livefuse.frame import Frame

__all__ = ["Faces", "Frame", "LivefuseError"]
__version__ = "0.1.0"
