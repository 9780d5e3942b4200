"""Clients for `vla0 serve`: PolicyClient (one WebSocket session) and RemotePolicy (the evaluation
Policy protocol, one session per environment). Needs only numpy, msgpack and websockets.

    client = PolicyClient("ws://127.0.0.1:8000", api_key=None)
    reply = client.infer({"observation.images.front": img, "task": "pick the cube"})
    reply["action"]   # the next action: this session's chunks executed as the policy says
    reply["actions"]  # (H, D): the chunk it came from; reply["inferred"]: whether the model ran
    client.reset()    # new episode: clears this session's ensembling history
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import connect

from vla0_client.executor import ChunkExecutor
from vla0_client.protocol import packb, parse_error_frame, unpackb

log = logging.getLogger("vla0.client")


class ServerError(RuntimeError):
    """The server refused a request (bad input, inference failure). The connection stays usable;
    after a message too large to read (close 1009) the next call reconnects."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


def _ws_url(url: str) -> str:
    if url.startswith(("http://", "https://")):
        url = "ws" + url[4:]
    return url if "://" in url else f"ws://{url}"


class PolicyClient:
    def __init__(self, url: str = "ws://127.0.0.1:8000", api_key: str | None = None,
                 connect_timeout: float = 30.0, max_backoff: float = 5.0):
        """Connects at once, retrying with exponential back-off for up to connect_timeout seconds
        (a server still loading its model is fine). A dropped connection is re-opened the same way
        on the next call; the new session starts with fresh ensembling history, as after reset()."""
        self.url = _ws_url(url)
        self._headers = {"Authorization": f"Api-Key {api_key}"} if api_key else {}
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self._ws = None
        self._metadata: dict = {}
        self._connect()

    @property
    def metadata(self) -> dict:
        """What the server sent on connect: model, horizon, action_dim, cameras, image_size, ..."""
        return self._metadata

    def infer(self, obs: dict, new_chunk: bool = False) -> dict:
        """One unbatched observation -> {"action": (D,), "actions": (H, D), "inferred": bool,
        "chunk_step": int, "server_timing": {...}}. The server runs the model only when this
        session's chunk is due (every n_action_steps requests); new_chunk=True forces it."""
        return self._call({**obs, "new_chunk": True} if new_chunk else obs)

    def reset(self) -> None:
        self._call({"type": "reset"})

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def __enter__(self) -> "PolicyClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _connect(self) -> None:
        deadline, delay = time.monotonic() + self.connect_timeout, 0.1
        while True:
            try:
                # images do not compress: deflate would only cost CPU on both ends
                ws = connect(self.url, additional_headers=self._headers, compression=None, max_size=None,
                             open_timeout=10, legacy=True)
                self._metadata = unpackb(ws.recv(timeout=30))
                self._ws = ws
                return
            except InvalidStatus as e:  # an HTTP answer instead of a WebSocket: retrying will not help
                status = e.response.status_code
                if status == 401:
                    raise PermissionError(f"{self.url}: missing or wrong API key") from None
                raise ConnectionError(f"{self.url}: server answered HTTP {status}") from None
            except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as e:
                if time.monotonic() + delay > deadline:
                    raise ConnectionError(f"cannot reach {self.url} ({type(e).__name__}: {e})") from e
                log.info("%s unreachable (%s); retrying in %.1fs", self.url, type(e).__name__, delay)
                time.sleep(delay)
                delay = min(2 * delay, self.max_backoff)

    def _call(self, msg: dict) -> dict:
        for attempt in range(2):
            try:
                if self._ws is None:
                    self._connect()
                self._ws.send(packb(msg))
                reply = self._ws.recv()
                break
            except (ConnectionClosed, OSError) as e:
                self._ws = None
                if isinstance(e, ConnectionClosed) and e.rcvd and e.rcvd.code == 1009:  # sending it again won't help
                    raise ServerError("too_large", e.rcvd.reason or "message too big") from None
                if attempt:
                    raise ConnectionError(f"lost {self.url}: {e}") from e
                log.warning("connection to %s lost (%s); reconnecting", self.url, e)
        if isinstance(reply, str):  # a refused request (protocol 3): "<code>: <message>"
            raise ServerError(*parse_error_frame(reply))
        reply = unpackb(reply)
        if isinstance(reply, dict) and "error" in reply:  # protocol 2 servers answered with a map
            raise ServerError(reply.get("code", "error"), reply["error"])
        return reply


class RemotePolicy:
    """The evaluation Policy protocol, served remotely: one WebSocket session per environment id,
    rows sent concurrently so the server batches them. Chunks are executed here by the same
    ChunkExecutor VLA0Policy uses in process (the server's metadata gives n_action_steps,
    ensemble and the action bounds): a new chunk every `n_action_steps` steps, temporal
    ensembling over the chunks the server returned. malformed_outputs stays 0: the
    server does not report it per request."""
    needs_images = True

    def __init__(self, url: str, api_key: str | None = None, name: str = "vla0-remote", max_workers: int = 32):
        self.url, self.api_key, self.name = url, api_key, name
        self.malformed_outputs = 0
        self._clients: dict[int, PolicyClient] = {}
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="vla0-remote")
        self.metadata = self._client(-1).metadata  # fail early on a wrong url or key
        self._clients.pop(-1).close()
        meta = self.metadata
        bounds = meta.get("action_bounds") or {}
        self.executor = ChunkExecutor(int(meta.get("ensemble", 1)), float(meta.get("ensemble_decay", 0.0)),
                                      int(meta.get("n_action_steps", meta.get("action_horizon", 1))),  # protocol 1
                                      (np.asarray(bounds.get("min", -np.inf), np.float32),
                                       np.asarray(bounds.get("max", np.inf), np.float32)),
                                      meta.get("ensemble_weights", "exponential"))

    def _client(self, env_id: int) -> PolicyClient:
        if env_id not in self._clients:
            self._clients[env_id] = PolicyClient(self.url, self.api_key)
        return self._clients[env_id]

    def reset(self, env_ids: list[int] | None = None) -> None:
        ids = list(self._clients) if env_ids is None else [int(i) for i in env_ids]
        self.executor.reset(None if env_ids is None else ids)
        list(self._pool.map(lambda i: self._clients[i].reset(), [i for i in ids if i in self._clients]))

    def needs_observation(self, env_ids: list[int]) -> list[bool]:
        return [self.executor.needs_chunk(int(e)) for e in env_ids]

    def select_action(self, obs: dict, env_ids: list[int]) -> np.ndarray:
        """obs batched (one row per env) -> (B, D) float32."""
        return self.executor.select_action(obs, env_ids, self._predict).astype(np.float32)

    def _predict(self, obs: dict, env_ids: list[int]) -> list[np.ndarray]:
        """One chunk per row, each row from its env's own session (requests sent concurrently)."""
        keys = [k for k in (*self.metadata["image_keys"], "observation.state", "task") if k in obs]
        clients = [self._client(e) for e in env_ids]  # connect sequentially, infer concurrently
        rows = [{k: obs[k] if isinstance(obs[k], str) else obs[k][j] for k in keys} for j in range(len(env_ids))]
        # this executor decides when a chunk is due; protocol 3 servers would otherwise answer from
        # the session's own chunk, counting requests rather than steps
        fresh = self.metadata.get("protocol", 1) >= 3
        return [np.asarray(c, np.float32) for c in self._pool.map(
            lambda cr: cr[0].infer(cr[1], new_chunk=fresh)["actions"], zip(clients, rows))]

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()
        self._pool.shutdown()
