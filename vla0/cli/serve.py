"""`vla0 serve`: load a policy and serve it (see docs/deploy.md)."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from vla0.model.compile import COMPILE_MODES
from vla0.model.quantize import QUANTIZE_MODES
from vla0.options import add_options, build, option


@dataclass
class ServeCommand:
    policy: str = option(help="a policy folder or a run folder")
    device: str | None = option(None, "torch device (default: cuda if available, else cpu)")
    dtype: str = option("float32", "model weights dtype", choices=("float32", "bfloat16"))
    ensemble: int | None = option(None, "override the policy's temporal ensembling")
    quantize: str = option("none", "quantized weights: int8/nf4 (bitsandbytes), ao-int8/ao-int8-weight/ao-int4 "
                           "(torchao)", choices=QUANTIZE_MODES)
    quantize_vision: bool = option(False, "with --quantize, quantize the vision tower too")
    compile: str = option("none", "torch.compile the model's MLPs (and a flow head's expert) with this mode; "
                          "the first requests of each batch size then wait for compilation", choices=COMPILE_MODES)
    max_message_mb: float = option(16.0, "largest accepted request, in MiB")


def run(args: argparse.Namespace) -> None:
    import torch

    from vla0.policy.policy import VLA0Policy
    from vla0.serve.server import PolicyServer, ServeConfig

    cmd = build(ServeCommand, args)
    if getattr(args, "api_key", None) is None:
        args.api_key = os.environ.get("VLA0_API_KEY") or None
    cfg = build(ServeConfig, args, max_message_bytes=int(cmd.max_message_mb * (1 << 20)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    device = cmd.device or ("cuda" if torch.cuda.is_available() else "cpu")
    policy = VLA0Policy.from_pretrained(cmd.policy, device=device, dtype=getattr(torch, cmd.dtype),
                                        ensemble=cmd.ensemble, quantize=cmd.quantize,
                                        quantize_vision=cmd.quantize_vision, compile_mode=cmd.compile)
    PolicyServer(policy, cfg, model_name=Path(cmd.policy).resolve().name).run()


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from vla0.serve.server import ServeConfig
    p = sub.add_parser("serve", help="serve a policy over WebSocket (msgpack) and HTTP",
                       description="Serve a trained policy: ws://HOST:PORT (msgpack), GET /healthz, "
                                   "GET /metadata, POST /act (JSON). See docs/deploy.md.")
    add_options(p, ServeCommand)
    add_options(p, ServeConfig, exclude=("max_message_bytes",))
    p.set_defaults(func=run)
