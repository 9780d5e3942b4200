"""The light client for `vla0 serve`: what a robot computer installs (numpy, msgpack, websockets;
no torch, transformers or MuJoCo). `pip install packages/vla0-client` from a vla0 checkout.

    from vla0_client import PolicyClient
    client = PolicyClient("ws://gpu-box:8000", api_key=KEY)
    action = client.infer({"observation.images.front": rgb, "task": "pick the cube"})["action"]
"""

from vla0_client.client import PolicyClient, RealTimeLoop, RemotePolicy, ServerError
from vla0_client.executor import EXECUTION_MODES, ChunkExecutor

__all__ = ["EXECUTION_MODES", "ChunkExecutor", "PolicyClient", "RealTimeLoop", "RemotePolicy", "ServerError"]
