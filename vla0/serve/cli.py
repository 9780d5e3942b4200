"""`vla0 serve`: load a policy and serve it (see docs/deploy.md)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="serve a policy over WebSocket (msgpack) and HTTP",
                              description="Serve a trained policy: ws://HOST:PORT (msgpack), GET /healthz, "
                                          "GET /metadata, POST /act (JSON). See docs/deploy.md.")
    p.add_argument("--policy", required=True, help="a policy folder or a run folder")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback only; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("VLA0_API_KEY"),
                   help="require 'Authorization: Api-Key <key>' (default: $VLA0_API_KEY; unset: no key)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="model weights dtype")
    p.add_argument("--max-batch", type=int, default=16, help="most requests decoded in one model call")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits for batch-mates")
    p.add_argument("--no-batching", action="store_true", help="one model call per request")
    p.add_argument("--max-message-mb", type=float, default=16.0, help="largest accepted request")
    p.add_argument("--state-dim", type=int, default=None, help="expected observation.state length")
    p.add_argument("--ensemble", type=int, default=None, help="override the policy's temporal ensembling")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> None:
    import torch

    from vla0.policy.policy import VLA0Policy
    from vla0.serve.server import PolicyServer, ServeConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    policy = VLA0Policy.from_pretrained(args.policy, device=device, dtype=getattr(torch, args.dtype),
                                        ensemble=args.ensemble)
    cfg = ServeConfig(host=args.host, port=args.port, api_key=args.api_key or None, batching=not args.no_batching,
                      max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                      max_message_bytes=int(args.max_message_mb * (1 << 20)), state_dim=args.state_dim)
    PolicyServer(policy, cfg, model_name=Path(args.policy).resolve().name).run()

