"""The policy server: wire format, auth, validation, sessions, batching, clients."""

import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from vla0.client import PolicyClient, RemotePolicy, ServerError
from vla0.policy.executor import ChunkExecutor
from vla0.policy.policy import VLA0Policy
from vla0.serve import protocol
from vla0.serve.server import PolicyServer, ServeConfig, ServerThread

FRONT, WRIST = "observation.images.front", "observation.images.wrist"
LIMIT = 256 << 10  # the test server's message limit


def make_obs(seed: int, task: str | None = None, size: int = 32) -> dict:
    rng = np.random.default_rng(seed)
    return {FRONT: rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            WRIST: rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "task": task or f"task {seed}: put block {seed % 5} in bin {seed % 3}"}


def in_process(policy, obs: dict) -> np.ndarray:
    batch = {k: [v] if k == "task" else np.asarray(v)[None] for k, v in obs.items()}
    return policy.predict_action_chunk(batch)[0]


@pytest.fixture(scope="module")
def policy(tiny_policy_dir):
    return VLA0Policy.from_pretrained(tiny_policy_dir)


@pytest.fixture(scope="module")
def server(policy):
    with ServerThread(PolicyServer(policy, ServeConfig(port=0, max_message_bytes=LIMIT, max_wait_ms=20))) as s:
        yield s


@pytest.fixture
def client(server):
    with PolicyClient(server.url) as c:
        yield c


def http(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url.replace("ws://", "http://"), data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# -- wire format ---------------------------------------------------------------------------------

def test_protocol_round_trip_is_bit_identical():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (4, 5, 3), dtype=np.uint8), rng.standard_normal((2, 7)).astype(np.float32),
              np.array([np.nan, -0.0, np.inf], np.float64), rng.standard_normal(3).astype(">f4"),
              np.arange(6, dtype=np.int64).reshape(3, 2)[:, ::-1], np.zeros((0, 3), np.float16),
              np.array([True, False])]
    msg = {"arrays": arrays, "scalar": np.float32(1.5), "nested": {"x": [1, "a", b"b"]}}
    out = protocol.unpackb(protocol.packb(msg))
    for a, b in zip(arrays, out["arrays"]):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    assert out["scalar"] == np.float32(1.5) and out["scalar"].dtype == np.float32
    assert out["nested"] == {"x": [1, "a", b"b"]}
    # openpi writes the header keys as msgpack bytes, some clients as str: both decode
    a = arrays[1]
    for key in (b"", ""):
        k = (lambda s: s.encode()) if key == b"" else (lambda s: s)
        raw = msgpack.packb({k("__ndarray__"): True, k("data"): a.tobytes(), k("dtype"): a.dtype.str,
                             k("shape"): a.shape}, use_bin_type=True)
        assert protocol.unpackb(raw).tobytes() == a.tobytes()


@pytest.mark.parametrize("dtype", [object, np.complex64, "V4"])
def test_protocol_refuses_unsafe_dtypes(dtype):
    with pytest.raises(ValueError):
        protocol.packb(np.zeros(2, dtype=dtype))
    raw = msgpack.packb({"__ndarray__": True, "data": b"\0" * 8, "dtype": np.dtype(dtype).str, "shape": [1]})
    with pytest.raises(protocol.ProtocolError):
        protocol.unpackb(raw)


@pytest.mark.parametrize("raw", [b"\xc1", b"\x92\x01", msgpack.packb({"__ndarray__": True, "data": b"abc",
                                                                      "dtype": "<f4", "shape": [2]}),
                                 msgpack.packb({"__ndarray__": True, "dtype": "<f4"}), b"\x91" * 5000])
def test_protocol_malformed(raw):
    with pytest.raises(protocol.ProtocolError):
        protocol.unpackb(raw)


# -- serving -------------------------------------------------------------------------------------

def test_metadata_and_round_trip(server, client, policy):
    meta = client.metadata
    assert (meta["chunk_size"], meta["action_dim"], meta["num_bins"]) == (2, 4, 100)
    assert meta["cameras"] == ["front", "wrist"] and meta["image_size"] == [32, 32]
    assert meta["action_bounds"] == {"min": [-1.0] * 4, "max": [1.0] * 4} and "vla0_version" in meta
    assert meta["protocol"] == 3 and meta["n_action_steps"] == 1
    assert http(server.url + "/metadata")[1] == meta
    assert http(server.url + "/healthz") == (200, {"status": "ok"})
    obs = make_obs(1)
    reply = client.infer(obs)
    assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (2, 4)
    assert reply["actions"].tobytes() == in_process(policy, obs).tobytes()
    assert reply["server_timing"]["infer_ms"] > 0 and reply["inferred"] and reply["chunk_step"] == 0


def test_session_ensembling_and_reset(client, policy):
    obs_a, obs_b = make_obs(2), make_obs(3)
    ca, cb = in_process(policy, obs_a), in_process(policy, obs_b)
    assert np.array_equal(client.infer(obs_a)["action"], ca[0])
    # ensemble=2, no decay: step 1 averages chunk a's row 1 with chunk b's row 0
    assert np.allclose(client.infer(obs_b)["action"], (ca[1] + cb[0]) / 2)
    client.reset()
    assert np.array_equal(client.infer(obs_b)["action"], cb[0])


def test_openpi_keys(client, policy):
    obs = make_obs(4)
    reply = client.infer({"observation/image": obs[FRONT], "observation/wrist_image": obs[WRIST],
                          "observation/state": np.zeros(6, np.float32), "prompt": obs["task"]})
    assert np.array_equal(reply["actions"], in_process(policy, obs))


def test_auth(policy):
    with ServerThread(PolicyServer(policy, ServeConfig(port=0, api_key="s3cret"))) as s:
        for key in (None, "wrong", "s3cre", "s3cret2"):
            with pytest.raises(PermissionError):
                PolicyClient(s.url, api_key=key, connect_timeout=1)
        body = json.dumps({"prompt": "x"}).encode()
        assert http(s.url + "/act", body)[0] == 401
        assert http(s.url + "/act", body, {"Authorization": "Api-Key nope"})[0] == 401
        assert http(s.url + "/metadata")[0] == 401
        assert http(s.url + "/healthz")[0] == 200  # liveness probes carry no key
        assert http(s.url + "/metadata", headers={"Authorization": "Api-Key s3cret"})[0] == 200
        with PolicyClient(s.url, api_key="s3cret") as c:
            assert c.infer(make_obs(5))["actions"].shape == (2, 4)
        assert s.server.batcher.calls == 1  # refused requests did no model work


def _bad(obs, **change):
    out = {**obs, **change}
    return {k: v for k, v in out.items() if v is not None}


BAD_INPUTS = {  # name: (the bad observation, the one error code it must get)
    "missing_camera": (lambda o: _bad(o, **{WRIST: None}), "missing_camera"),
    "unknown_camera": (lambda o: _bad(o, **{"observation.images.top": o[FRONT]}), "unknown_camera"),
    "bad_image": (lambda o: _bad(o, **{FRONT: o[FRONT][..., :2]}), "bad_image"),
    "bad_image_dtype": (lambda o: _bad(o, **{FRONT: o[FRONT].astype(np.float32)}), "bad_image"),
    "bad_image_list": (lambda o: _bad(o, **{FRONT: o[FRONT].tolist()}), "bad_image"),
    "nan_state": (lambda o: _bad(o, **{"observation.state": np.array([0.0, np.nan, 1.0], np.float32)}), "bad_state"),
    "short_state": (lambda o: _bad(o, **{"observation.state": np.zeros(2, np.float32)}), "bad_state"),
    "state_2d": (lambda o: _bad(o, **{"observation.state": np.zeros((1, 3), np.float32)}), "bad_state"),
    "missing_task": (lambda o: _bad(o, task=None), "missing_task"),
    "task_not_str": (lambda o: _bad(o, task=["a", "b"]), "bad_task"),
    "too_large": (lambda o: _bad(o, **{FRONT: np.zeros((320, 320, 3), np.uint8)}), "too_large"),
    "not_a_map": (lambda o: [1, 2, 3], "bad_message"),
}


def test_bad_inputs_keep_the_connection(server, policy):
    good = make_obs(6)
    expected = in_process(policy, good)
    with PolicyClient(server.url) as c:
        c.infer({**good, "observation.state": np.zeros(3, np.float32)})  # this session's state has 3 values
        for name, (make, code) in BAD_INPUTS.items():
            with pytest.raises(ServerError) as e:
                c.infer(make(good))
            assert e.value.code == code, (name, str(e.value))
            assert np.array_equal(c.infer(good)["actions"], expected), name
    # malformed msgpack, a bad array header and text frames, on a raw socket: refusals come back
    # as text frames "<code>: <message>" (openpi's client raises RuntimeError on text frames)
    with connect(server.url, compression=None, legacy=True) as ws:
        ws.recv()
        for raw, code in ((b"\xc1\xff", "bad_msgpack"),
                          (msgpack.packb({"__ndarray__": True, "data": b"x", "dtype": "|O", "shape": [1]}), "bad_msgpack"),
                          ("{\"task\": \"x\"}", "bad_message"),
                          (b"\0" * (LIMIT + 1), "too_large")):
            ws.send(raw)
            reply = ws.recv()
            assert isinstance(reply, str) and protocol.parse_error_frame(reply)[0] == code, (raw[:20], reply)
        assert "--max-message-mb" in reply and str(LIMIT) in reply  # the limit, and how to raise it
        ws.send(protocol.packb(good))
        assert np.array_equal(protocol.unpackb(ws.recv())["actions"], expected)
    # above 4x the limit the frame is not read: a close frame 1009 says why, even while the
    # client is still sending (aiohttp alone reset the connection: "no close frame received")
    with connect(server.url, compression=None, max_size=None, legacy=True) as ws:
        ws.recv()
        with pytest.raises(ConnectionClosed) as e:
            ws.send(b"\0" * (100 << 20))  # 100 MB, as a new user sent it
            ws.recv(timeout=10)
    assert e.value.rcvd.code == 1009 and "--max-message-mb" in e.value.rcvd.reason, e.value
    with PolicyClient(server.url) as c:
        with pytest.raises(ServerError) as e:
            c.infer({**good, FRONT: np.zeros((4 * LIMIT,), np.uint8)})
        assert e.value.code == "too_large"
        assert np.array_equal(c.infer(good)["actions"], expected)  # reconnected


def _png(image: np.ndarray, fmt: str = "PNG") -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def test_http_act(server, policy):
    obs = make_obs(7)
    body = {FRONT: _png(obs[FRONT]), "observation/wrist_image": obs[WRIST].tolist(), "prompt": obs["task"]}
    status, reply = http(server.url + "/act", json.dumps(body).encode())
    assert status == 200 and np.array_equal(np.float32(reply["actions"]), in_process(policy, obs))
    jpeg = {**body, FRONT: "data:image/jpeg;base64," + _png(obs[FRONT], "JPEG")}
    assert http(server.url + "/act", json.dumps(jpeg).encode())[0] == 200
    for bad, code in [(b"{not json", 400), (json.dumps({**body, FRONT: "aGVsbG8="}).encode(), 400),
                      (json.dumps({**body, FRONT: [[[300, 0, 0]]]}).encode(), 400),
                      (json.dumps({**body, "prompt": None}).encode(), 400), (b"[1]", 400),
                      (b" " * (LIMIT + 1), 413)]:
        status, reply = http(server.url + "/act", bad)
        assert status == code and reply["error"], bad[:40]
    assert "--max-message-mb" in http(server.url + "/act", b" " * (LIMIT + 1))[1]["error"]
    assert http(server.url + "/act", json.dumps(body).encode())[0] == 200


def test_concurrent_clients_get_their_own_results(server, policy):
    n = 16
    observations = [make_obs(100 + i) for i in range(n)]
    expected = [in_process(policy, o) for o in observations]
    clients = [PolicyClient(server.url) for _ in range(n)]
    replies: list = [None] * n
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        replies[i] = [clients[i].infer(observations[i]) for _ in range(2)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    for i in range(n):
        first, second = replies[i]
        assert np.array_equal(first["actions"], expected[i]) and np.array_equal(second["actions"], expected[i])
        ens = ChunkExecutor(2)
        ens.add(0, expected[i]), ens.pop(0), ens.add(0, expected[i])
        assert np.allclose(second["action"], ens.pop(0)), i  # each session ensembled only its own chunks
    assert max(r["server_timing"]["batch_size"] for rs in replies for r in rs) > 1  # requests were batched
    [c.close() for c in clients]


def test_batching_off(policy):
    with ServerThread(PolicyServer(policy, ServeConfig(port=0, batching=False))) as s:
        clients = [PolicyClient(s.url) for _ in range(3)]
        threads = [threading.Thread(target=c.infer, args=(make_obs(i),)) for i, c in enumerate(clients)]
        [t.start() for t in threads]
        [t.join(30) for t in threads]
        assert s.server.batcher.calls == 3
        [c.close() for c in clients]


def test_client_disconnects_mid_request(server, policy):
    for _ in range(3):
        ws = connect(server.url, compression=None, legacy=True)
        ws.recv()
        ws.send(protocol.packb(make_obs(8)))
        ws.close()  # gone before the reply
    obs = make_obs(9)
    with PolicyClient(server.url) as c:
        assert np.array_equal(c.infer(obs)["actions"], in_process(policy, obs))
    deadline = time.monotonic() + 10
    while server.server.batcher.sessions and time.monotonic() < deadline:  # every session was closed
        time.sleep(0.05)
    assert server.server.batcher.sessions == 0


@pytest.mark.parametrize("n_action_steps", [1, 2])
def test_remote_policy_matches_in_process(tiny_policy_dir, n_action_steps):
    local = VLA0Policy.from_pretrained(tiny_policy_dir, n_action_steps=n_action_steps)
    served = VLA0Policy.from_pretrained(tiny_policy_dir, n_action_steps=n_action_steps)
    rows_decoded, predict = [], served.predict_action_chunk
    served.predict_action_chunk = lambda obs: rows_decoded.append(len(obs["task"])) or predict(obs)
    with ServerThread(PolicyServer(served, ServeConfig(port=0))) as s:
        remote = RemotePolicy(s.url)
        for step in range(4):
            rows = [make_obs(200 + 10 * env + step) for env in range(3)]
            obs = {k: np.stack([r[k] for r in rows]) for k in (FRONT, WRIST)}
            obs["task"] = [r["task"] for r in rows]
            if step == 2:
                remote.reset([1]), local.reset([1])
            assert np.allclose(remote.select_action(obs, [0, 1, 2]), local.select_action(obs, [0, 1, 2]), atol=1e-6)
        remote.close()
    # the server decoded exactly the chunks the client's executor asked for: every step, or steps 0 and 2
    assert sum(rows_decoded) == (12 if n_action_steps == 1 else 6)


def test_session_executes_n_action_steps_without_the_model(tiny_policy_dir):
    """A policy that runs 2 steps per chunk: the server answers every other request from the
    session's chunk, exactly as VLA0Policy.select_action does in process."""
    local = VLA0Policy.from_pretrained(tiny_policy_dir, n_action_steps=2)
    served = VLA0Policy.from_pretrained(tiny_policy_dir, n_action_steps=2)
    with ServerThread(PolicyServer(served, ServeConfig(port=0))) as s, PolicyClient(s.url) as c:
        assert c.metadata["n_action_steps"] == 2
        for step in range(5):
            obs = make_obs(300 + step)
            reply = c.infer(obs)
            expected = local.select_action({k: [v] if k == "task" else v[None] for k, v in obs.items()}, [0])[0]
            assert np.allclose(reply["action"], expected, atol=1e-6), step
            assert (reply["inferred"], reply["chunk_step"]) == (step % 2 == 0, step % 2), step
            assert (reply["server_timing"]["batch_size"] > 0) == reply["inferred"]
        assert s.server.batcher.calls == 3
        assert c.infer(make_obs(400), new_chunk=True)["inferred"]  # forced, mid-chunk
        c.reset()
        assert c.infer(make_obs(401))["inferred"]


def test_cli_parser():
    import argparse

    from vla0.cli.serve import ServeCommand, add_parsers, run
    from vla0.options import build
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--policy", "runs/x", "--no-batching", "--max-message-mb", "2"])
    assert args.func is run
    cfg = build(ServeConfig, args, max_message_bytes=int(build(ServeCommand, args).max_message_mb * (1 << 20)))
    assert (cfg.host, cfg.port, cfg.batching, cfg.max_message_bytes) == ("127.0.0.1", 8000, False, 2 << 20)


def test_client_waits_for_the_server_and_reconnects(policy):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ServeConfig(port=port)
    clients = []
    connecting = threading.Thread(target=lambda: clients.append(PolicyClient(f"ws://127.0.0.1:{port}",
                                                                             connect_timeout=30)))
    connecting.start()  # before the server exists: the client backs off and retries
    time.sleep(0.5)
    obs = make_obs(10)
    with ServerThread(PolicyServer(policy, cfg)):
        connecting.join(30)
        assert clients[0].infer(obs)["actions"].shape == (2, 4)
    with ServerThread(PolicyServer(policy, cfg)):  # a restarted server: the next call reconnects
        assert np.array_equal(clients[0].infer(obs)["actions"], in_process(policy, obs))
    clients[0].close()
