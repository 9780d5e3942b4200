"""Clients for `vla0 serve`: PolicyClient (one WebSocket session) and RemotePolicy (the evaluation
Policy protocol). They live in the light client package `vla0_client` (packages/vla0-client:
numpy, msgpack and websockets only), which a robot computer installs without torch; this module
keeps `from vla0.client import PolicyClient` working where vla0 is installed."""

from vla0_client.client import PolicyClient, RemotePolicy, ServerError

__all__ = ["PolicyClient", "RemotePolicy", "ServerError"]
