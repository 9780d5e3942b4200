"""`vla0 serve` driven by the registry's openpi-client (openpi_client.WebsocketClientPolicy), as a
new user would: installed with --no-deps (it pins numpy<2, which its code does not need) plus
msgpack, websockets and typing_extensions (see the Makefile)."""

import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import ConnectionClosed, InvalidStatus

from vla0.policy.policy import VLA0Policy
from vla0.serve.server import PolicyServer, ServeConfig, ServerThread

LIMIT = 256 << 10


@pytest.fixture(scope="module")
def policy(tiny_policy_dir):
    return VLA0Policy.from_pretrained(tiny_policy_dir)


def openpi_obs(seed: int) -> dict:
    """openpi's key names: the server maps them to the policy's cameras and task."""
    rng = np.random.default_rng(seed)
    return {"observation/image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
            "prompt": f"put block {seed} in the bin"}


def in_process(policy, obs: dict) -> np.ndarray:
    batch = {"observation.images.front": obs["observation/image"][None],
             "observation.images.wrist": obs["observation/wrist_image"][None], "task": [obs["prompt"]]}
    return policy.predict_action_chunk(batch)[0]


def test_openpi_client_metadata_inference_and_errors(policy):
    with ServerThread(PolicyServer(policy, ServeConfig(port=0, max_message_bytes=LIMIT))) as s:
        client = WebsocketClientPolicy(s.url)
        meta = client.get_server_metadata()
        assert (meta["chunk_size"], meta["action_dim"], meta["protocol"]) == (2, 4, 3)
        obs = openpi_obs(0)
        reply = client.infer(obs)
        assert reply["actions"].shape == (2, 4) and np.array_equal(reply["actions"], in_process(policy, obs))
        # a bad observation: openpi's client raises with vla0's message, and the session goes on
        with pytest.raises(RuntimeError, match="missing_camera: observation lacks cameras"):
            client.infer({k: v for k, v in obs.items() if k != "observation/wrist_image"})
        with pytest.raises(RuntimeError, match=r"too_large: .*--max-message-mb"):
            client.infer({**obs, "observation/image": np.zeros((LIMIT,), np.uint8)})
        assert np.array_equal(client.infer(openpi_obs(1))["actions"], in_process(policy, openpi_obs(1)))
        # far above the limit: a close frame (1009) naming the limit, not a reset connection
        with pytest.raises(ConnectionClosed) as e:
            client.infer({**obs, "observation/image": np.zeros((100 << 20,), np.uint8)})  # 100 MB
        assert e.value.rcvd.code == 1009 and "--max-message-mb" in e.value.rcvd.reason
        assert WebsocketClientPolicy(s.url).infer(obs)["actions"].shape == (2, 4)  # the server serves on


def test_openpi_client_api_key(policy):
    with ServerThread(PolicyServer(policy, ServeConfig(port=0, api_key="s3cret"))) as s:
        for key in (None, "wrong"):
            with pytest.raises(InvalidStatus) as e:
                WebsocketClientPolicy(s.url, api_key=key)
            assert e.value.response.status_code == 401
        assert WebsocketClientPolicy(s.url, api_key="s3cret").infer(openpi_obs(2))["actions"].shape == (2, 4)
        assert s.server.batcher.calls == 1


def test_light_client_package_needs_no_torch():
    """packages/vla0-client installs on a robot computer on its own: numpy, msgpack, websockets."""
    import subprocess
    import sys
    import tomllib
    from pathlib import Path

    package = Path(__file__).parents[1] / "packages" / "vla0-client"
    deps = tomllib.loads((package / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(d.split(">")[0].split("=")[0] for d in deps) == ["msgpack", "numpy", "websockets"]
    code = ("import sys, vla0_client\n"
            "heavy = [m for m in ('torch', 'transformers', 'mujoco', 'aiohttp', 'vla0') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "assert vla0_client.PolicyClient and vla0_client.RemotePolicy and vla0_client.ChunkExecutor")
    subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(package)}, cwd=package, check=True)
