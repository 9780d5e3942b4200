"""Client observation -> a checked, canonical Observation, or a RequestError naming the problem.

Everything a client can get wrong is caught here, one request at a time, so a bad request is
refused before it reaches the batch it would otherwise share with other sessions.

Keys: LeRobot style (`observation.images.<camera>`, `observation.state`, `task`) or openpi style,
mapped as follows (see `key_mapping`):
    observation/image        -> the camera named "image", else the policy's first camera
    observation/wrist_image  -> the camera named "wrist_image" or "wrist", else the second camera
    observation/<cam>, observation/<cam>_image -> observation.images.<cam>
    observation/state        -> observation.state
    prompt                   -> task

Real-time chunking (vla0_client.executor, mode "rtc"): a request may carry `prefix_actions`, the
robot's plan from this observation's step on ((k, D) floats, k <= H), and `committed_steps`, how
many of its rows run while this request is computed (0 <= committed_steps <= k, < H).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla0.config import IMAGE_PREFIX, PolicyConfig

STATE, TASK = "observation.state", "task"
PREFIX, COMMITTED = "prefix_actions", "committed_steps"
MAX_TASK_CHARS = 2000
MAX_STATE_DIM = 4096


class RequestError(ValueError):
    """A refused request (a client mistake, or a failed inference): reported to that client, never
    fatal to the server or the connection."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code

    def reply(self) -> dict:
        return {"error": str(self), "code": self.code}


@dataclass
class Observation:
    images: dict[str, np.ndarray]  # full key -> (h, w, 3) uint8
    task: str
    state: np.ndarray | None = None  # (S,) float32
    prefix: np.ndarray | None = None  # (k, D) float32: the robot's plan (real-time chunking)
    committed_steps: int = 0  # rows of prefix executed while this request is computed

    @property
    def signature(self) -> tuple:
        """Observations with equal signatures stack into one batch."""
        shapes = tuple(self.images[k].shape for k in sorted(self.images))
        return shapes, None if self.state is None else self.state.shape


def key_mapping(cameras: list[str]) -> dict[str, str]:
    """openpi-style key -> LeRobot key, for this policy's cameras."""
    m = {"observation/state": STATE, "prompt": TASK}
    for cam in cameras:
        m[f"observation/{cam}"] = IMAGE_PREFIX + cam
        m[f"observation/{cam}_image"] = IMAGE_PREFIX + cam
    if "observation/image" not in m:
        m["observation/image"] = IMAGE_PREFIX + cameras[0]
    if "observation/wrist_image" not in m:
        wrist = "wrist" if "wrist" in cameras else (cameras[1] if len(cameras) > 1 else None)
        if wrist:
            m["observation/wrist_image"] = IMAGE_PREFIX + wrist
    return m


class ObservationSpec:
    def __init__(self, config: PolicyConfig, state_dim: int | None = None, max_image_side: int = 2048):
        self.image_keys = list(config.image_keys)
        self.mapping = key_mapping(config.cameras)
        self.state_dim = state_dim
        self.max_image_side = max_image_side
        # tiling cameras side by side needs equal heights unless the policy resizes them first
        self.equal_heights = config.image_layout == "tile" and not config.image_size
        self.chunk_size, self.action_dim = config.chunk_size, config.action_dim
        # a flow expert trained with --expert-inputs reads them besides the images
        self.expert_inputs = list(config.flow_expert.get("inputs", {})) if config.flow_expert else []
        unsupported = [k for k in self.expert_inputs if k != STATE]
        if unsupported:
            raise ValueError(f"this policy's expert reads {unsupported}; the server passes only {STATE!r} besides "
                             "the cameras and the task")

    def parse(self, raw, state_dim: int | None = None) -> Observation:
        """state_dim: the expected state length when the server was not told one (e.g. the
        length this session sent first)."""
        if not isinstance(raw, dict):
            raise RequestError("bad_message", f"an observation must be a map, got {type(raw).__name__}")
        obs: dict = {}
        for key, value in raw.items():
            if not isinstance(key, str):
                raise RequestError("unknown_key", f"keys must be strings, got {key!r}")
            canon = self.mapping.get(key, key)
            if canon in obs:
                raise RequestError("duplicate_key", f"{key!r} and another key both give {canon!r}")
            obs[canon] = value
        unknown = sorted(k for k in obs if k not in (*self.image_keys, STATE, TASK, PREFIX, COMMITTED))
        if unknown:
            cams = [k for k in unknown if k.startswith(IMAGE_PREFIX) or k.startswith("observation/")]
            code = "unknown_camera" if cams else "unknown_key"
            raise RequestError(code, f"unknown keys {unknown}; this policy takes {self.image_keys}, "
                                     f"{STATE!r} and {TASK!r} (or the openpi keys {sorted(self.mapping)})")
        missing = [k for k in self.image_keys if k not in obs]
        if missing:
            raise RequestError("missing_camera", f"observation lacks cameras {missing}; "
                                                 f"this policy takes {self.image_keys}")
        if self.expert_inputs and obs.get(STATE) is None:
            raise RequestError("missing_key", f"observation lacks {STATE!r}: this policy's action expert reads it "
                                              f"(trained with --expert-inputs {','.join(self.expert_inputs)})")
        images = {k: self._image(k, obs[k]) for k in self.image_keys}
        if self.equal_heights and len({im.shape[0] for im in images.values()}) > 1:
            raise RequestError("bad_image", "cameras are tiled side by side, so they need equal heights; got "
                               + ", ".join(f"{k} {im.shape}" for k, im in images.items()))
        prefix, committed = self._prefix(obs.get(PREFIX), obs.get(COMMITTED))
        return Observation(images, self._task(obs.get(TASK)), self._state(obs.get(STATE), state_dim), prefix, committed)

    def _prefix(self, prefix, committed) -> tuple[np.ndarray | None, int]:
        H, D = self.chunk_size, self.action_dim
        want = f"expected a (k, {D}) float array with k <= {H} (the chunk size)"
        if prefix is None:
            if committed not in (None, 0):
                raise RequestError("bad_prefix", f"{COMMITTED!r} given without {PREFIX!r}: {want}")
            return None, 0
        try:
            arr = np.asarray(prefix, dtype=np.float64)
        except (TypeError, ValueError):
            raise RequestError("bad_prefix", f"{PREFIX}: {want}, got {type(prefix).__name__}") from None
        if arr.size == 0:
            arr = arr.reshape(0, D)
        if arr.ndim != 2 or arr.shape[1] != D or arr.shape[0] > H:
            raise RequestError("bad_prefix", f"{PREFIX}: {want}, got shape {tuple(arr.shape)}")
        if not np.isfinite(arr).all():
            raise RequestError("bad_prefix", f"{PREFIX}: contains NaN or infinity")
        committed = 0 if committed is None else committed
        if isinstance(committed, bool) or not isinstance(committed, (int, np.integer)) \
                or not 0 <= committed <= min(len(arr), H - 1):
            raise RequestError("bad_prefix", f"{COMMITTED}: expected an integer in 0..{min(len(arr), H - 1)} "
                                             f"(rows of {PREFIX}, below the chunk size {H}), got {committed!r}")
        return arr.astype(np.float32), int(committed)

    def _image(self, key: str, im) -> np.ndarray:
        if not isinstance(im, np.ndarray):
            raise RequestError("bad_image", f"{key}: expected an (h, w, 3) uint8 array, got {type(im).__name__}")
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise RequestError("bad_image", f"{key}: expected an (h, w, 3) uint8 array, "
                                            f"got {im.dtype} {tuple(im.shape)}")
        h, w = im.shape[:2]
        if not (1 <= h <= self.max_image_side and 1 <= w <= self.max_image_side):
            raise RequestError("bad_image", f"{key}: image of {h}x{w}; each side must be 1..{self.max_image_side}")
        return im

    def _task(self, task) -> str:
        if task is None:
            raise RequestError("missing_task", f"observation lacks {TASK!r} (or 'prompt'): the language instruction")
        if not isinstance(task, str) or not task.strip():
            raise RequestError("bad_task", f"{TASK!r} must be a non-empty string, got {type(task).__name__}")
        if len(task) > MAX_TASK_CHARS:
            raise RequestError("bad_task", f"{TASK!r} has {len(task)} characters; at most {MAX_TASK_CHARS}")
        return task

    def _state(self, state, session_dim: int | None) -> np.ndarray | None:
        if state is None:
            return None
        try:
            arr = np.asarray(state)
        except ValueError as e:
            raise RequestError("bad_state", f"{STATE}: not a vector ({e})") from None
        if arr.dtype.kind not in "biuf" or arr.ndim != 1 or not 1 <= arr.size <= MAX_STATE_DIM:
            raise RequestError("bad_state", f"{STATE}: expected a 1-D float vector, got {arr.dtype} {arr.shape}")
        arr = arr.astype(np.float32)
        expected = self.state_dim or session_dim
        if expected is not None and arr.shape[0] != expected:
            raise RequestError("bad_state", f"{STATE}: expected {expected} values, got {arr.shape[0]}")
        if not np.isfinite(arr).all():
            raise RequestError("bad_state", f"{STATE}: contains NaN or infinity at {np.flatnonzero(~np.isfinite(arr)).tolist()}")
        return arr
