"""The policy server: one aiohttp app serving a msgpack WebSocket and a small HTTP API.

    ws  /         (also /ws) metadata on connect, then one observation -> one reply per message
    GET /healthz  liveness, no key needed
    GET /metadata what the policy expects and returns
    POST /act     one JSON observation -> JSON reply, stateless (no ensembling history)

aiohttp rather than websockets: it serves WebSockets and HTTP POST bodies from one asyncio
server (websockets' process_request hook cannot read a request body), and it enforces size
limits on both before our code sees the bytes.

The model is reached only through policy.predict_action_chunk (via the Batcher); sessions,
validation and the wire format live here, apart from the modelling code.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from vla0.options import option
from vla0.policy.executor import ChunkExecutor
from vla0.serve import protocol
from vla0.serve.batching import Batcher
from vla0.serve.validation import ObservationSpec, RequestError

log = logging.getLogger("vla0.serve")
# 3: refusals in text frames, sessions execute n_action_steps per chunk; 2: metadata says
# chunk_size and n_action_steps (1: horizon, action_horizon)
PROTOCOL_VERSION = 3
SERVER_FAULTS = ("inference_error", "internal_error")  # refusals that are not the client's mistake
# the refusal names the command-line option that raises the limit
TOO_LARGE = "message of {size} bytes exceeds the server's {limit}-byte limit (vla0 serve --max-message-mb)"


@dataclass
class ServeConfig:
    host: str = option("127.0.0.1", "interface to bind (loopback unless told otherwise: a policy server drives "
                       "hardware; 0.0.0.0 for all)")
    port: int = option(8000)
    api_key: str | None = option(None, "require 'Authorization: Api-Key <key>' (default: $VLA0_API_KEY; unset: no key)")
    batching: bool = option(True, "decode requests of concurrent sessions in one model call")
    max_batch: int = option(16, "most requests decoded in one model call")
    max_wait_ms: float = option(5.0, "how long a lone request waits for batch-mates")
    max_message_bytes: int = option(16 << 20, "larger requests get an error reply")
    state_dim: int | None = option(None, "expected observation.state length (default: the policy's, else each "
                                   "session's first)")
    max_image_side: int = option(2048, "largest accepted image side, in pixels")


def vla0_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("vla0")
    except PackageNotFoundError:
        import vla0
        return getattr(vla0, "__version__", "unknown")


class Session:
    """Per-connection state: its own chunk executor, so sessions never mix. A request is one
    step: the executor asks for a new chunk every n_action_steps steps, as VLA0Policy's does, and
    the steps between are answered from the stored chunks without a model call."""
    _ids = itertools.count()

    def __init__(self, config):
        self.id = next(self._ids)
        self.executor = ChunkExecutor(config.ensemble, config.ensemble_decay, config.n_action_steps,
                                      config.action_bounds,
                                      config.ensemble_weights)
        self.chunk: np.ndarray | None = None  # the newest chunk, sent as "actions"
        self.state_dim: int | None = None

    def reset(self) -> None:
        self.executor.reset()
        self.chunk = None
        self.state_dim = None


class _WebSocket(web.WebSocketResponse):
    """aiohttp's WebSocket, refusing an oversized frame so that the client learns why.

    aiohttp answers a frame above max_msg_size with close 1009 and then closes the TCP
    connection at once, while the client is still sending that frame: the unread bytes make the
    kernel reset the connection, which destroys the close frame before the client reads it (the
    client sees "no close frame received or sent"). Here the close frame names the limit, and the
    connection is closed LINGER_S later; aiohttp discards what arrives meanwhile."""
    LINGER_S = 1.0

    def __init__(self, max_message_bytes: int):
        super().__init__(max_msg_size=4 * max_message_bytes, compress=False, heartbeat=30)
        self.too_big_reason = f"above {4 * max_message_bytes} bytes; limit {max_message_bytes} (--max-message-mb)"

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and not message:
            message = self.too_big_reason.encode()
        return await super().close(code=code, message=message, drain=drain)

    # aiohttp 3.x's private hook (3.14 here): close() calls it once the close frame is sent;
    # tests/test_serve.py and tests/test_openpi_client.py fail if that changes
    def _set_code_close_transport(self, code) -> None:
        if self.close_code == WSCloseCode.MESSAGE_TOO_BIG:
            asyncio.get_running_loop().call_later(self.LINGER_S, super()._set_code_close_transport, code)
        else:
            super()._set_code_close_transport(code)


class PolicyServer:
    def __init__(self, policy, cfg: ServeConfig | None = None, model_name: str | None = None):
        self.policy = policy
        self.cfg = cfg = cfg or ServeConfig()
        pc = policy.config
        self.spec = ObservationSpec(pc, cfg.state_dim or pc.state_dim or None, cfg.max_image_side)
        self.batcher = Batcher(policy.predict_action_chunk, cfg.max_batch if cfg.batching else 1, cfg.max_wait_ms)
        self.metadata = {
            "model": model_name or getattr(policy, "name", "vla0"), "vla0_version": vla0_version(),
            "protocol": PROTOCOL_VERSION, "chunk_size": pc.chunk_size, "action_dim": pc.action_dim,
            "head": pc.head, "num_bins": pc.num_bins, "action_format": pc.action_format, "cameras": list(pc.cameras),
            "image_keys": list(pc.image_keys),
            "image_size": pc.image_size, "image_layout": pc.image_layout, "camera_shapes": pc.camera_shapes,
            "action_bounds": {"min": list(pc.action_stats["min"]), "max": list(pc.action_stats["max"])},
            "ensemble": pc.ensemble, "ensemble_decay": pc.ensemble_decay, "n_action_steps": pc.n_action_steps,
            "ensemble_weights": pc.ensemble_weights, "execution": pc.execution, "latency_steps": pc.latency_steps,
            "real_time_chunking": True,  # requests may carry prefix_actions / committed_steps
            "state_dim": self.spec.state_dim, "key_mapping": self.spec.mapping,
            "expert_inputs": self.spec.expert_inputs,
            "max_message_bytes": cfg.max_message_bytes, "batching": cfg.batching, "max_batch": cfg.max_batch,
        }
        self._sockets: set[web.WebSocketResponse] = set()
        self.port: int | None = None

    # -- app ------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        # aiohttp refuses larger POST bodies with 413 before they are read
        app = web.Application(middlewares=[self._auth], client_max_size=self.cfg.max_message_bytes)
        app.router.add_get("/", self._websocket)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metadata", self._metadata)
        app.router.add_post("/act", self._act)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app) -> None:
        self.batcher.start()

    async def _on_shutdown(self, app) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"server shutting down")

    async def _on_cleanup(self, app) -> None:
        await self.batcher.stop()

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        """Refuse before any work: runs before the body is read or the socket upgraded."""
        if self.cfg.api_key is not None and request.path != "/healthz":
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, f"Api-Key {self.cfg.api_key}".encode()):
                return web.json_response({"error": "missing or wrong API key: send the header "
                                          "'Authorization: Api-Key <key>'", "code": "unauthorized"}, status=401)
        return await handler(request)

    # -- HTTP -----------------------------------------------------------------------------------
    async def _healthz(self, request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _metadata(self, request) -> web.Response:
        return web.json_response(self.metadata)

    async def _act(self, request: web.Request) -> web.Response:
        received = time.perf_counter()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            size = request.content_length or f"more than {self.cfg.max_message_bytes}"  # chunked: unknown
            return web.json_response({"error": TOO_LARGE.format(size=size, limit=self.cfg.max_message_bytes),
                                      "code": "too_large"}, status=413)
        try:
            try:
                raw = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                raise RequestError("bad_json", f"malformed JSON: {e}") from None
            if not isinstance(raw, dict):
                raise RequestError("bad_message", f"an observation must be a JSON object, got {type(raw).__name__}")
            for key, value in raw.items():
                if self.spec.mapping.get(key, key) in self.spec.image_keys:
                    raw[key] = self._json_image(key, value)
            self.batcher.sessions += 1
            try:
                reply = await self._infer(raw, session=None, received=received)
            finally:
                self.batcher.sessions -= 1
        except RequestError as e:
            return web.json_response(e.reply(), status=500 if e.code in SERVER_FAULTS else 400)
        return web.json_response(protocol.to_jsonable(reply))

    def _json_image(self, key, value) -> np.ndarray:
        try:
            return protocol.decode_json_image(value, key, self.cfg.max_image_side ** 2)
        except protocol.ProtocolError as e:
            raise RequestError("bad_image", str(e)) from None

    # -- WebSocket ------------------------------------------------------------------------------
    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        # frames above 4x our limit are refused with close 1009 (see _WebSocket) before they are
        # buffered; between the limit and 4x it they get an error reply, keeping the connection
        ws = _WebSocket(self.cfg.max_message_bytes)
        if not ws.can_prepare(request).ok:
            return web.json_response({"error": "this endpoint speaks WebSocket (msgpack); see GET /metadata",
                                      "code": "not_websocket"}, status=400)
        await ws.prepare(request)
        session = Session(self.policy.config)
        self._sockets.add(ws)
        self.batcher.sessions += 1
        log.info("session %d opened from %s", session.id, request.remote)
        try:
            await ws.send_bytes(protocol.packb(self.metadata))
            async for msg in ws:
                received = time.perf_counter()
                if msg.type == WSMsgType.BINARY:
                    reply = await self._message(msg.data, session, received)
                elif msg.type == WSMsgType.TEXT:
                    reply = RequestError("bad_message", "send msgpack in binary frames, not text")
                else:  # ERROR (e.g. a frame above the hard limit): aiohttp has sent the close frame
                    if ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
                        await asyncio.sleep(ws.LINGER_S)  # returning would close the socket now
                    break
                if ws.closed:  # the client left while its request ran
                    break
                if isinstance(reply, RequestError):  # a text frame: openpi's client raises on it
                    await ws.send_str(protocol.error_frame(reply.code, str(reply)))
                else:
                    await ws.send_bytes(protocol.packb(reply))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._sockets.discard(ws)
            self.batcher.sessions -= 1
            log.info("session %d closed", session.id)
        return ws

    async def _message(self, data: bytes, session: Session, received: float) -> dict | RequestError:
        try:
            if len(data) > self.cfg.max_message_bytes:
                raise RequestError("too_large", TOO_LARGE.format(size=len(data), limit=self.cfg.max_message_bytes))
            try:
                raw = protocol.unpackb(data)
            except protocol.ProtocolError as e:
                raise RequestError("bad_msgpack", str(e)) from None
            new_chunk = False
            if isinstance(raw, dict):
                if raw.get("type") == "reset" or raw.get("reset") is True:
                    session.reset()
                    return {"reset": True}
                if raw.get("type") == "infer":
                    del raw["type"]
                new_chunk = raw.pop("new_chunk", False) is True
            return await self._infer(raw, session, received, new_chunk)
        except RequestError as e:
            return e
        except Exception as e:  # a server bug must not take the connection down with it
            log.exception("session %d: unexpected error", session.id)
            return RequestError("internal_error", f"internal error: {type(e).__name__}")

    # -- inference ------------------------------------------------------------------------------
    async def _infer(self, raw, session: Session | None, received: float, new_chunk: bool = False) -> dict:
        """One step of a session (or a stateless /act request): validate, run the model when a new
        chunk is due (or asked for), and execute the session's chunks for this step."""
        obs = self.spec.parse(raw, session.state_dim if session else None)
        # a request carrying the robot's plan (real-time chunking) always asks for a new chunk
        due = session is None or new_chunk or obs.prefix is not None or session.executor.needs_chunk(0)
        timing = {"queue_ms": 0.0, "infer_ms": 0.0, "batch_size": 0}
        if due:
            try:
                result = await self.batcher.submit(obs)
            except Exception as e:
                log.exception("inference failed")
                raise RequestError("inference_error", f"inference failed: {type(e).__name__}: {e}") from None
            timing = {"queue_ms": result.queue_ms, "infer_ms": result.infer_ms, "batch_size": result.batch_size}
        if session is None:
            chunk, step, action = result.chunk, 0, np.clip(result.chunk[0], *self.policy.config.action_bounds)
        else:
            if obs.state is not None:
                session.state_dim = obs.state.shape[0]
            if due:
                session.executor.add(0, result.chunk)
                session.chunk = result.chunk
            chunk, step = session.chunk, session.executor.steps_since_chunk(0)
            action = session.executor.pop(0)
        return {
            "action": action.astype(np.float32),
            "actions": chunk.astype(np.float32),  # the chunk action comes from; row chunk_step is this step's
            "chunk_step": step,
            "inferred": due,
            "server_timing": {**timing, "total_ms": (time.perf_counter() - received) * 1000},
        }

    # -- running --------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until interrupted (Ctrl-C)."""
        print(f"vla0 serve: {self.metadata['model']} on ws://{self.cfg.host}:{self.cfg.port} "
              f"(HTTP: /healthz /metadata /act){' [API key required]' if self.cfg.api_key else ''}", flush=True)
        web.run_app(self.app(), host=self.cfg.host, port=self.cfg.port, access_log=None, print=None)


class ServerThread:
    """A PolicyServer on its own event loop in a background thread (tests, benchmarks, notebooks).
    port=0 picks a free port; url then names it."""

    def __init__(self, server: PolicyServer):
        self.server = server
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._main, name="vla0-serve", daemon=True)
        self.url = ""

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        if not self._ready.wait(30) or not self.url:
            raise RuntimeError("policy server did not start")
        return self

    def __exit__(self, *exc) -> None:
        if self._loop and self._runner:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    def _main(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._runner = web.AppRunner(self.server.app(), access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            cfg = self.server.cfg
            site = web.TCPSite(self._runner, cfg.host, cfg.port)
            self._loop.run_until_complete(site.start())
            self.server.port = self._runner.addresses[0][1]
            self.url = f"ws://{cfg.host}:{self.server.port}"
        finally:
            self._ready.set()
        self._loop.run_forever()
        self._loop.close()
