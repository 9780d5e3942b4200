"""A pool of environment workers (any registered env) driven in lockstep over pipes.

Slots are numbered 0..B-1; slot i lives in worker i % num_workers, so a batch
can be wider than the number of processes (each worker steps its slots in
turn). A slot keeps its env between episodes and rebuilds it only when the
EnvSpec changes (building costs about a second). A worker process that dies
(a simulator crash: segfault, OOM kill) is started again; the jobs it held
come back as EnvCrash, and its other slots answer EnvCrash until reset, so
the caller (vla0.envs.runner) restarts those episodes instead of losing the
run. An exception inside an env is not a crash: it is raised. Workers use the "spawn"
context: fork after a GL context exists hangs, and spawn children inherit
our OMP_NUM_THREADS=1 and MUJOCO_GL. num_workers=0 runs everything
in-process (tests, debugging).
"""
import multiprocessing as mp
import os
import traceback

import numpy as np

from vla0.envs.base import get_env
from vla0.envs.gl import ensure_gl


class _Slots:
    """The envs of one worker (or of the in-process pool), by slot id."""

    def __init__(self, registry: dict | None = None):
        if registry:  # adapters registered at run time (vla0.envs.base.register) exist here too
            from vla0.envs import base
            base._REGISTRY.update(registry)
        self.envs = {}

    def reset(self, jobs):
        out = []
        for slot, spec, seed in jobs:
            env = self.envs.get(slot)
            if env is None or env.spec != spec:
                if env is not None:
                    env.close()
                env = self.envs[slot] = get_env(spec.env).make(spec)
            out.append(env.reset(seed)[0])
        return out

    def step(self, jobs):
        return [self.envs[slot].step(action, render) for slot, action, render in jobs]

    def expert(self, slots):
        return [self.envs[slot].expert_action() for slot in slots]

    def close(self):
        for env in self.envs.values():
            env.close()
        self.envs.clear()


def registry() -> dict:
    """The env adapters registered in this process, for a worker to register too."""
    from vla0.envs.base import _REGISTRY
    return dict(_REGISTRY)


class EnvCrash:
    """The result of a job whose env worker process died: the episode in that slot is lost (the
    worker was restarted with no envs) and must be started again from its seed."""

    def __init__(self, worker: int, exitcode):
        self.worker, self.exitcode = worker, exitcode

    def __repr__(self):
        return f"EnvCrash(worker={self.worker}, exitcode={self.exitcode})"


def _worker(conn, registry=None):
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        slots = _Slots(registry)
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ok", None))
    while True:
        try:
            cmd, arg = conn.recv()
        except (EOFError, KeyboardInterrupt):
            break
        if cmd == "close":
            slots.close()
            conn.send(("ok", None))
            break
        try:
            conn.send(("ok", getattr(slots, cmd)(arg)))
        except Exception:
            conn.send(("error", traceback.format_exc()))
    conn.close()


class EnvPool:
    def __init__(self, num_workers: int = 2):
        if num_workers < 0:
            raise ValueError(f"EnvPool: num_workers must be >= 0, got {num_workers}")
        ensure_gl()
        self.num_workers = num_workers
        self.specs: dict[int, object] = {}
        self.restarts = 0  # worker processes started again after dying
        self._lost: set[int] = set()  # slots whose env died with its worker, until their next reset
        self._local = None
        self._conns, self._procs = [None] * num_workers, [None] * num_workers
        if num_workers == 0:
            self._local = _Slots()
            return
        for w in range(num_workers):
            self._start(w)
        for w in range(num_workers):
            self._recv(w)

    def _start(self, w: int) -> None:
        ctx = mp.get_context("spawn")
        old = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"  # children read it at startup, before numpy loads
        try:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, registry()), daemon=True)
            proc.start()
            child.close()
        finally:
            if old is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = old
        self._conns[w], self._procs[w] = parent, proc

    def _restart(self, w: int) -> EnvCrash:
        """Worker w died: start a fresh one (no envs), mark its slots lost."""
        proc = self._procs[w]
        proc.join(timeout=5)
        try:
            self._conns[w].close()
        except OSError:
            pass
        self._start(w)
        self._recv(w)
        return self._lose(w, proc.exitcode)

    def _lose(self, w: int, exitcode) -> EnvCrash:
        """Worker w was started again: its slots' envs are gone until their next reset."""
        self.restarts += 1
        self._lost |= {s for s in self.specs if s % self.num_workers == w}
        return EnvCrash(w, exitcode)

    def _recv(self, w: int):
        try:
            status, payload = self._conns[w].recv()
        except EOFError:
            raise RuntimeError(f"env worker {w} died (exit code {self._procs[w].exitcode})") from None
        if status == "error":
            raise RuntimeError(f"env worker {w} failed:\n{payload}")
        return payload

    def _shares(self, cmd: str, jobs: list, slot_of, out: list) -> dict[int, list]:
        """Each worker's share of the jobs, as (job index, job); a job on a lost slot (other than a
        reset) gets an EnvCrash in `out` instead."""
        shares: dict[int, list] = {}
        for i, job in enumerate(jobs):
            slot = slot_of(job)
            if cmd != "reset" and slot in self._lost:
                out[i] = EnvCrash(slot % self.num_workers, None)
                continue
            self._lost.discard(slot)
            shares.setdefault(slot % self.num_workers, []).append((i, job))
        return shares

    def _run(self, cmd: str, jobs: list, slot_of) -> list:
        """Send each worker its share of jobs, gather replies in job order. A job on a lost slot
        (other than a reset), or on a worker that dies now, gets an EnvCrash."""
        if self._local is not None:
            return getattr(self._local, cmd)(jobs)
        out = [None] * len(jobs)
        sent = {}
        for w, share in self._shares(cmd, jobs, slot_of, out).items():
            try:
                self._conns[w].send((cmd, [job for _, job in share]))
                sent[w] = share
            except (BrokenPipeError, OSError):
                crash = self._restart(w)
                for i, _ in share:
                    out[i] = crash
        for w, share in sent.items():
            try:
                status, payload = self._conns[w].recv()
            except (EOFError, OSError):
                crash = self._restart(w)
                for i, _ in share:
                    out[i] = crash
                continue
            if status == "error":
                raise RuntimeError(f"env worker {w} failed:\n{payload}")
            for (i, _), res in zip(share, payload):
                out[i] = res
        return out

    def reset(self, specs: list, seeds: list[int], ids: list[int] | None = None) -> list[dict]:
        """Start episodes: slot ids[i] (default i) gets specs[i] with seeds[i]."""
        ids = list(range(len(specs))) if ids is None else list(ids)
        if not (len(specs) == len(seeds) == len(ids)):
            raise ValueError(f"EnvPool.reset: {len(specs)} specs, {len(seeds)} seeds, {len(ids)} ids")
        for i, spec in zip(ids, specs):
            self.specs[i] = spec
        return self._run("reset", list(zip(ids, specs, seeds)), lambda j: j[0])

    def step(self, actions: list, ids: list[int] | None = None, render: list[bool] | None = None) -> list:
        """Step slot ids[i] with actions[i]; a None action skips that slot (result None).
        render[i] = False: that slot's next observation carries no camera images."""
        ids = list(range(len(actions))) if ids is None else list(ids)
        render = [True] * len(actions) if render is None else list(render)
        if len(render) != len(actions):
            raise ValueError(f"EnvPool.step: {len(actions)} actions, {len(render)} render flags")
        jobs = [(i, np.asarray(a, np.float32), r) for i, a, r in zip(ids, actions, render) if a is not None]
        res = iter(self._run("step", jobs, lambda j: j[0]))
        return [None if a is None else next(res) for a in actions]

    def expert_actions(self, ids: list[int] | None = None) -> list[np.ndarray]:
        ids = sorted(self.specs) if ids is None else list(ids)
        return self._run("expert", ids, lambda s: s)

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None
        for conn, proc in zip(self._conns, self._procs):
            if conn is None:
                continue
            try:
                conn.send(("close", None))
                conn.recv()
            except (EOFError, BrokenPipeError, OSError):
                pass
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        self._conns, self._procs = [], []

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
