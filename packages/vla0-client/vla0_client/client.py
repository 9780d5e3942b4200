"""Clients for `vla0 serve`: PolicyClient (one WebSocket session) and RemotePolicy (the evaluation
Policy protocol, one session per environment). Needs only numpy, msgpack and websockets.

    client = PolicyClient("ws://127.0.0.1:8000", api_key=None)
    reply = client.infer({"observation.images.front": img, "task": "pick the cube"})
    reply["action"]   # the next action: this session's chunks executed as the policy says
    reply["actions"]  # (H, D): the chunk it came from; reply["inferred"]: whether the model ran
    client.reset()    # new episode: clears this session's ensembling history

On a robot, RealTimeLoop keeps the arm moving while the server thinks: inference runs in a
background thread, overlapping with execution, and chunks are executed in one of the executor's
modes (sync, async, async-ensemble, rtc; vla0_client.executor):

    loop = RealTimeLoop(PolicyClient(url), fps=30, execution="rtc")
    loop.run(get_observation, send_action, steps=600)   # or loop.step(obs) once per control tick
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor

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

    def __init__(self, url: str, api_key: str | None = None, name: str = "vla0-remote", max_workers: int = 32,
                 execution: str | None = None, latency_steps: int = 0):
        """execution: the executor's mode (default: the server's); latency_steps: simulated
        inference latency in control steps (evaluation)."""
        self.url, self.api_key, self.name = url, api_key, name
        self.malformed_outputs = 0
        self._clients: dict[int, PolicyClient] = {}
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="vla0-remote")
        self.metadata = self._client(-1).metadata  # fail early on a wrong url or key
        self._clients.pop(-1).close()
        self.execution = execution or self.metadata.get("execution", "sync")
        self.latency_steps = latency_steps
        if self.execution == "rtc" and not self.metadata.get("real_time_chunking"):
            raise ValueError(f"{url}: this server does not take committed actions (real-time chunking)")
        self.executor = executor_for(self.metadata, self.execution, latency_steps)

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

    def episode_stats(self, env_id: int) -> dict:
        return self.executor.episode_stats(env_id)

    def _predict(self, obs: dict, env_ids: list[int], prefix=None, committed_steps=None) -> list[np.ndarray]:
        """One chunk per row, each row from its env's own session (requests sent concurrently).
        prefix / committed_steps: real-time chunking's plan per row, sent with the request."""
        keys = [k for k in (*self.metadata["image_keys"], "observation.state", "task") if k in obs]
        clients = [self._client(e) for e in env_ids]  # connect sequentially, infer concurrently
        rows = [{k: obs[k] if isinstance(obs[k], str) else obs[k][j] for k in keys} for j in range(len(env_ids))]
        if prefix is not None:
            for row, p, d in zip(rows, prefix, committed_steps):
                row.update(rtc_fields(p, d, self.metadata["action_dim"]))
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


def executor_for(meta: dict, execution: str = "sync", latency_steps: int = 0) -> ChunkExecutor:
    """The chunk executor a server's policy asks for (its metadata), in the given mode."""
    bounds = meta.get("action_bounds") or {}
    return ChunkExecutor(int(meta.get("ensemble", 1)), float(meta.get("ensemble_decay", 0.0)),
                         int(meta.get("n_action_steps", meta.get("action_horizon", 1))),  # protocol 1
                         (np.asarray(bounds.get("min", -np.inf), np.float32),
                          np.asarray(bounds.get("max", np.inf), np.float32)),
                         meta.get("ensemble_weights", "exponential"), execution, latency_steps,
                         meta.get("chunk_size", meta.get("horizon")))


def rtc_fields(plan: np.ndarray, committed: int, action_dim: int) -> dict:
    """The request fields of real-time chunking: the robot's plan and its committed rows."""
    plan = np.asarray(plan, np.float32)
    return {"prefix_actions": plan.reshape(-1, action_dim) if plan.size else np.zeros((0, action_dim), np.float32),
            "committed_steps": int(committed)}


class RealTimeLoop:
    """A robot's control loop at `fps` with inference overlapped: requests run in a background
    thread while the arm executes what it already has. One session (env id 0).

    Each tick, step(obs) (1) takes a chunk that has arrived (its rows are indexed from the step its
    observation was taken at, so the time it took is skipped), (2) launches a request when one is
    due and none is in flight, with the robot's plan and committed rows in rtc mode, and (3)
    returns this step's action. When nothing is left to execute (the first chunk; in sync mode
    every chunk) it waits for the request: the robot pauses. The latency used for the committed
    rows is latency_steps if given, else measured: the slowest of the last 10 requests, in steps."""

    def __init__(self, client: PolicyClient, fps: float, execution: str = "rtc", latency_steps: int | None = None):
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        meta = client.metadata
        if execution == "rtc" and not meta.get("real_time_chunking"):
            raise ValueError(f"{client.url}: this server does not take committed actions (real-time chunking)")
        self.client, self.fps, self.execution = client, fps, execution
        self.chunk_size, self.action_dim = int(meta["chunk_size"]), int(meta["action_dim"])
        self.fixed_latency = latency_steps
        self.executor = executor_for(meta, execution, latency_steps or 0)
        self.latencies: list[float] = []  # seconds per request, newest last
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vla0-rtc")
        self._future: Future | None = None

    def reset(self) -> None:
        """A new episode: forget the chunks (a request in flight is dropped)."""
        self._drop()
        self.executor.reset()
        self.client.reset()

    def step(self, obs: dict) -> np.ndarray:
        """obs: one unbatched observation (the newest); returns the (D,) action to send now."""
        ex = self.executor
        self._collect(block=False)
        if self._future is None and ex.needs_chunk(0):
            request = dict(obs)
            if self.execution == "rtc":
                request.update(rtc_fields(ex.plan(0), ex.committed_steps(0), self.action_dim))
            ex.launch(0)
            self._future = self._pool.submit(self._infer, request, ex.step(0))
        if self.execution == "sync" or not ex.has_action(0):  # the robot waits for the chunk in flight
            self._collect(block=True)
        return ex.pop(0)

    def run(self, get_observation, send_action, steps: int) -> None:
        """steps ticks at fps: get_observation() -> obs, send_action(action)."""
        period, next_tick = 1.0 / self.fps, time.monotonic()
        for _ in range(steps):
            send_action(self.step(get_observation()))
            next_tick += period
            time.sleep(max(0.0, next_tick - time.monotonic()))

    def close(self) -> None:
        self._drop()
        self._pool.shutdown()

    def _infer(self, request: dict, launched_at: int):
        t0 = time.perf_counter()
        chunk = np.asarray(self.client.infer(request, new_chunk=True)["actions"], np.float32)
        return chunk, launched_at, time.perf_counter() - t0

    def _collect(self, block: bool) -> None:
        if self._future is None or not (block or self._future.done()):
            return
        chunk, launched_at, seconds = self._future.result()
        self._future = None
        self.executor.add(0, chunk, predicted_at=launched_at)
        self.latencies = (self.latencies + [seconds])[-10:]
        if self.fixed_latency is None:  # the rows committed next time: this latency, in steps, below H
            self.executor.set_latency(min(self.chunk_size - 1, math.ceil(max(self.latencies) * self.fps)))

    def _drop(self) -> None:
        if self._future is not None:
            self._future.cancel()
            try:
                self._future.result()
            except Exception:  # noqa: BLE001 - a dropped request's failure is nobody's concern
                pass
            self._future = None
