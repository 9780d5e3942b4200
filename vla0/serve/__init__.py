"""Serving a VLA0Policy over the network: `vla0 serve --policy RUN_DIR`; clients in vla0.client.

protocol (msgpack + numpy wire format) and validation import no server dependencies, so a robot
machine needs only numpy, msgpack and websockets to talk to a server. See docs/deploy.md.
"""

__all__ = ["PolicyServer", "ServeConfig", "ServerThread"]


def __getattr__(name):  # lazy: importing vla0.serve.protocol must not pull in aiohttp
    if name in __all__:
        from vla0.serve import server
        return getattr(server, name)
    raise AttributeError(name)
