"""The realtime gateway (`pyfuncs serve`): table changes over WebSocket and SSE, to the
subscribers row-level security lets see them. See app.py for the endpoints."""

from .app import Gateway, create_app
from .config import GatewayConfig

__all__ = ["Gateway", "GatewayConfig", "create_app"]
