"""Serving benchmark -> bench/results/serve.json.

1. Overhead: a client's round trip to `vla0 serve` minus the model call it waited for (the
   server reports infer_ms), p50/p99 ms, next to the in-process predict_action_chunk latency.
2. Throughput (requests/s) with 1, 4 and 16 concurrent clients, dynamic batching on and off.

The server runs in its own process, as in deployment; clients are threads here.
    python bench/serve.py                  # the embedded tiny model (untrained), CPU
    python bench/serve.py --policy RUN_DIR # a real policy
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def tiny_policy(folder: Path) -> Path:
    from vla0.config import PolicyConfig
    from vla0.model.tiny import init_model
    init_model("tiny", folder, seed=0)
    PolicyConfig(action_dim=7, cameras=["front", "wrist"], chunk_size=8, num_bins=1000, image_size=[64, 64],
                 action_stats={"min": [-1.0] * 7, "max": [1.0] * 7}, ensemble=8).save(folder)
    return folder


def observation(seed: int, size: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"observation.images.front": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "observation.images.wrist": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "observation.state": rng.standard_normal(8).astype(np.float32), "task": f"pick up block {seed % 7}"}


def serve(policy_dir: str, port: int, batching: bool, device: str) -> None:
    import torch
    torch.set_num_threads(1)
    from vla0.policy.policy import VLA0Policy
    from vla0.serve.server import PolicyServer, ServeConfig
    policy = VLA0Policy.from_pretrained(policy_dir, device=device)
    PolicyServer(policy, ServeConfig(port=port, batching=batching, max_batch=16)).run()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs, q) -> float:
    return round(float(np.percentile(xs, q)), 3)


def throughput(url: str, clients: int, requests: int, size: int) -> dict:
    from vla0.client import PolicyClient
    conns = [PolicyClient(url) for _ in range(clients)]
    obs = [observation(i, size) for i in range(clients)]
    for c, o in zip(conns, obs):
        c.infer(o)  # warm up
    batches, barrier = [], threading.Barrier(clients + 1)

    def run(i):
        barrier.wait()
        for _ in range(requests):
            batches.append(conns[i].infer(obs[i])["server_timing"]["batch_size"])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    [t.start() for t in threads]
    barrier.wait()
    start = time.perf_counter()
    [t.join() for t in threads]
    elapsed = time.perf_counter() - start
    [c.close() for c in conns]
    return {"clients": clients, "requests": clients * requests, "seconds": round(elapsed, 3),
            "requests_per_s": round(clients * requests / elapsed, 2), "mean_batch_size": round(float(np.mean(batches)), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default=None, help="policy or run folder (default: the tiny untrained model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--image-size", type=int, default=224, help="side of the camera frames sent")
    ap.add_argument("--latency-requests", type=int, default=50)
    ap.add_argument("--requests", type=int, default=32, help="per throughput run, split between the clients")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve.json"))
    args = ap.parse_args()

    import torch
    torch.set_num_threads(1)
    from vla0.client import PolicyClient
    from vla0.policy.policy import VLA0Policy
    policy_dir = args.policy or str(tiny_policy(Path(tempfile.mkdtemp()) / "tiny"))
    policy = VLA0Policy.from_pretrained(policy_dir, device=args.device)
    obs = observation(0, args.image_size)
    batched = {k: [v] if k == "task" else v[None] for k, v in obs.items()}

    policy.predict_action_chunk(batched)
    local = []
    for _ in range(args.latency_requests):
        t = time.perf_counter()
        policy.predict_action_chunk(batched)
        local.append((time.perf_counter() - t) * 1000)
    del policy

    ctx = mp.get_context("spawn")
    result = {"policy": args.policy or "tiny (untrained, H=8, D=7, 2 cameras)", "device": args.device,
              "image_size": args.image_size, "cpu_count": os.cpu_count(), "platform": platform.platform(),
              "torch_threads": 1, "throughput": {}}
    for batching in (True, False):
        port = free_port()
        proc = ctx.Process(target=serve, args=(policy_dir, port, batching, args.device), daemon=True)
        proc.start()
        url = f"ws://127.0.0.1:{port}"
        try:
            if batching:  # latency: one client, nothing to batch with
                with PolicyClient(url, connect_timeout=120) as c:
                    c.infer(obs)
                    rtt, overhead = [], []
                    for _ in range(args.latency_requests):
                        t = time.perf_counter()
                        reply = c.infer(obs)
                        ms = (time.perf_counter() - t) * 1000
                        rtt.append(ms)
                        overhead.append(ms - reply["server_timing"]["infer_ms"])
                result["latency_ms"] = {
                    "in_process": {"p50": pct(local, 50), "p99": pct(local, 99)},
                    "client_round_trip": {"p50": pct(rtt, 50), "p99": pct(rtt, 99)},
                    "server_overhead": {"p50": pct(overhead, 50), "p99": pct(overhead, 99)},
                    "requests": args.latency_requests}
            else:
                PolicyClient(url, connect_timeout=120).close()
            key = "batching_on" if batching else "batching_off"
            result["throughput"][key] = [throughput(url, n, max(2, args.requests // n), args.image_size)
                                         for n in (1, 4, 16)]
        finally:
            proc.terminate()
            proc.join(10)

    from vla0.io import write_text_atomic
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("latency_ms", "throughput")}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
