"""Environment slots as Ray actors: EnvPool's interface on a Ray cluster (`--ray [ADDRESS]`).

Slot i lives in actor i % num_actors, as it lives in worker process i % num_workers of an
EnvPool, and each actor keeps its slots' envs with the same code as a worker process
(vla0.envs.pool._Slots). Only the transport differs: Ray method calls instead of pipes, so the
actors may sit on any node of the cluster. The policy stays in the driver (or in an actor of its
own, vla0.eval.ray_policy) and batches the slots' observations as with the local pool, so the same
seeds give the same episodes. An actor that dies (a simulator segfault kills its process) is
started again, as a dead worker process is: its jobs come back as EnvCrash and the runner restarts
those episodes.

Ray is an optional dependency: `pip install 'vla0[ray]'`. Every node needs vla0 installed (the
actors import it) and, to render, the EGL or OSMesa libraries (see vla0.envs.gl).
"""

from __future__ import annotations

import argparse
import os

from vla0.envs.gl import ensure_gl
from vla0.envs.pool import EnvPool, _Slots, registry

RAY_INSTALL = "pip install 'vla0[ray]'  (or: pip install ray==2.60.0)"
START_TIMEOUT_S = 300.0  # actors the cluster cannot place are reported, not waited for forever


def add_ray_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """`--ray [ADDRESS]` for a command whose `what` runs on Ray actors."""
    parser.add_argument("--ray", nargs="?", const="", default=argparse.SUPPRESS, metavar="ADDRESS",
                        help=f"run {what} on Ray actors (--workers of them): --ray alone joins $RAY_ADDRESS or "
                             "starts Ray on this machine; --ray auto joins the cluster this machine is part of "
                             "(`ray start`); --ray HOST:6379 a cluster's head. Needs " + RAY_INSTALL)


def require_ray():
    """The ray module, or an error that says how to install it (before any expensive work)."""
    try:
        import ray
    except ImportError:
        raise ImportError(f"--ray needs Ray, which is not installed here: {RAY_INSTALL}") from None
    return ray


def connect(address: str | None):
    """Join the cluster at `address` ("" or None: $RAY_ADDRESS if set, else a new Ray instance on
    this machine). A process already connected (e.g. by its own ray.init) stays as it is."""
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=address or None)
    return ray


def start_actors(ray, cls, n: int, num_cpus: float, *args, num_gpus: float = 0,
                 hint: str = "lower --workers or add nodes") -> list:
    """n actors of cls, started and ready; a cluster without room for them is an error (hint: what
    the user can change)."""
    actor = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(cls)
    actors = [actor.remote(*args) for _ in range(n)]
    try:
        ray.get([a.ready.remote() for a in actors], timeout=START_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        for a in actors:
            ray.kill(a)
        raise RuntimeError(f"Ray did not start {n} {cls.__name__} actors of {num_cpus} CPU"
                           f"{f' and {num_gpus} GPU' if num_gpus else ''} each within "
                           f"{START_TIMEOUT_S:.0f} s; the cluster has {ray.cluster_resources()}, free "
                           f"{ray.available_resources()}: {hint}") from None
    return actors


class _SlotsActor(_Slots):
    """One actor's envs: a worker process's loop body, called over Ray instead of a pipe."""

    def __init__(self, registry: dict | None = None):
        os.environ["OMP_NUM_THREADS"] = "1"
        ensure_gl()  # this node's offscreen GL, chosen before anything imports MuJoCo
        super().__init__(registry)

    def ready(self) -> bool:
        return True


class RayEnvPool(EnvPool):
    """EnvPool's reset / step / expert_actions / close, with the slots in Ray actors."""

    def __init__(self, num_actors: int = 2, address: str | None = None, num_cpus: float = 1.0):
        if num_actors < 1:
            raise ValueError(f"RayEnvPool: num_actors must be >= 1, got {num_actors}")
        self._ray = connect(address)
        # EnvPool's own state, without its worker processes: the actors replace them
        self.num_workers = num_actors
        self.specs: dict[int, object] = {}
        self.restarts, self._lost = 0, set()
        self._local, self._conns, self._procs = None, [], []
        self._num_cpus = num_cpus
        self._actors = start_actors(self._ray, _SlotsActor, num_actors, num_cpus, registry())

    def _run(self, cmd: str, jobs: list, slot_of) -> list:
        """Each actor its share of the jobs, all at once; replies in job order. A job on a lost
        slot, or on an actor that dies now, gets an EnvCrash (the actor is started again)."""
        out = [None] * len(jobs)
        shares = self._shares(cmd, jobs, slot_of, out)
        calls = {w: getattr(self._actors[w], cmd).remote([job for _, job in share]) for w, share in shares.items()}
        for w, share in shares.items():
            try:
                replies = self._ray.get(calls[w])
            except self._ray.exceptions.RayActorError:
                self._ray.kill(self._actors[w])
                self._actors[w] = start_actors(self._ray, _SlotsActor, 1, self._num_cpus, registry())[0]
                replies = [self._lose(w, None)] * len(share)
            for (i, _), res in zip(share, replies):
                out[i] = res
        return out

    def close(self) -> None:
        close_actors(self._ray, getattr(self, "_actors", []))
        self._actors = []


def open_pool(num_workers: int, ray_address: str | None = None) -> EnvPool:
    """The local process pool, or with ray_address (not None) Ray actors, num_workers of them."""
    if ray_address is None:
        return EnvPool(num_workers)
    return RayEnvPool(max(1, num_workers), ray_address)


def close_actors(ray, actors) -> None:
    """Ask each actor to close its envs, then end it."""
    for actor in actors:
        try:
            ray.get(actor.close.remote(), timeout=30)
        except Exception:  # a dead actor or node has nothing left to close
            pass
        ray.kill(actor)
