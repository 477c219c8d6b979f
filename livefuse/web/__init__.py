"""WebRTC: ``livefuse serve``, the browser demo page, WHIP ingest and WHEP/OBS viewers.

Needs the optional ``webrtc`` extra (aiortc, aiohttp): ``pip install "livefuse[webrtc]"``.
"""

from livefuse.web.options import SessionLimits, StartOptions
from livefuse.web.server import ServerConfig, create_app, serve
from livefuse.web.session import Session
from livefuse.web.sessions import SessionManager

__all__ = ["ServerConfig", "Session", "SessionLimits", "SessionManager", "StartOptions", "create_app", "serve"]
