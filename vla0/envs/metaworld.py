"""Meta-World v3 behind the environment interface (vla0.envs): the MetaWorld family and its env.

Differences from `gym.make("Meta-World/MT1", ...)`, all on purpose:
- Initial object/goal positions are drawn from our seed (not from MT1's 50
  fixed variants), so held-out seeds are genuinely unseen positions.
- The goal is fully observable in `observation.environment_state` (the
  scripted experts read it); policies only get images + 4-dim state.
- Several cameras render from one mujoco.Renderer, with shadows and
  multisampling off (about 6x faster) and corner cameras turned upright.
- the `visible_goal` option (default on) enlarges and recolours the goal *site* (rendering only,
  sites have no physics) so the target is a few pixels wide at 64 px.
"""
import warnings
from dataclasses import dataclass

import numpy as np

from vla0.envs.base import EnvFamily, EnvSpec, checked_action
from vla0.envs.gl import ensure_gl

ensure_gl()  # must precede the first mujoco import

import mujoco  # noqa: E402
from metaworld.env_dict import ALL_V3_ENVIRONMENTS  # noqa: E402
from metaworld.policies import ENV_POLICY_MAP  # noqa: E402

from vla0.envs.metaworld_tasks import INSTRUCTIONS  # noqa: E402


def quiet_expert(expert, state: np.ndarray) -> np.ndarray:
    """expert.get_action, without its per-step warning about gains > 1 (they are on purpose)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", category=UserWarning)
        return expert.get_action(state)


TASKS: list[str] = sorted(t for t in ALL_V3_ENVIRONMENTS if t in ENV_POLICY_MAP and t in INSTRUCTIONS)
CAMERAS: tuple[str, ...] = ("topview", "corner", "corner2", "corner3", "corner4", "gripperPOV", "behindGripper")
FPS = 80  # model timestep 0.0025 s x frame_skip 5 = 12.5 ms per env step

# Episode step caps. Meta-World's own horizon is 500 steps; the scripted experts
# finish these tasks in 50-105 steps, so a tighter cap keeps failing policies
# from dominating evaluation time while leaving room for slower successes.
MAX_EPISODE_STEPS: dict[str, int] = {
    "reach-v3": 150,
    "button-press-topdown-v3": 150,
    "drawer-open-v3": 150,
    "drawer-close-v3": 150,
    "push-v3": 200,
    "pick-place-v3": 200,
    "door-open-v3": 250,
    "window-open-v3": 200,
    "window-close-v3": 200,
    "peg-insert-side-v3": 250,
}
DEFAULT_MAX_EPISODE_STEPS = 300

GOAL_SITE_RADIUS = 0.04  # reach succeeds within 0.05 m, so the sphere stays "inside" the target
GOAL_SITE_RGBA = (0.1, 1.0, 0.1, 1.0)  # bright green: unlike the red robot, red puck and wood table


class MetaWorld(EnvFamily):
    name = "metaworld"
    fps = FPS
    action_dim = 4  # end-effector dx, dy, dz and the gripper, each in [-1, 1]
    action_low = np.full(4, -1.0, np.float32)
    action_high = np.full(4, 1.0, np.float32)
    cameras = CAMERAS
    default_cameras = ("corner3", "topview")
    robot_type = "sawyer"
    state_names = ["x", "y", "z", "gripper"]
    action_names = ["dx", "dy", "dz", "gripper"]
    extra_features = {"observation.environment_state": 39}  # the full state the experts read
    has_expert = True
    options = {"visible_goal": True}

    def tasks(self) -> list[str]:
        return TASKS

    def instruction(self, task: str) -> str:
        self.check_task(task)
        return INSTRUCTIONS[task]

    def max_episode_steps(self, task: str) -> int:
        return MAX_EPISODE_STEPS.get(task, DEFAULT_MAX_EPISODE_STEPS)

    def make(self, spec: EnvSpec) -> "MetaWorldEnv":
        return MetaWorldEnv(spec)


class MetaWorldEnv:
    def __init__(self, spec: EnvSpec):
        self.spec = spec
        env = ALL_V3_ENVIRONMENTS[spec.task]()
        # What MT1's goal-observable wrapper does, minus freezing the positions:
        # seeded_rand_vec draws each reset's positions from env.np_random.
        env._partially_observable = False
        env.__dict__.pop("sawyer_observation_space", None)  # cached_property tied to observability
        env._set_task_called = True
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env.max_path_length = 10**9  # we truncate ourselves; metaworld raises past its horizon
        self._env = env
        self._expert = ENV_POLICY_MAP[spec.task]()
        self._instruction = INSTRUCTIONS[spec.task]
        self._renderer = None
        model = env.model
        if spec.options["visible_goal"]:
            sid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "goal")
            if sid >= 0:
                model.site_size[sid, 0] = max(model.site_size[sid, 0], GOAL_SITE_RADIUS)
                model.site_rgba[sid] = GOAL_SITE_RGBA
        if spec.cameras:
            h, w = spec.image_size
            # Must be set before the GL context exists: shadows + 4x MSAA cost ~6x per frame.
            model.vis.quality.shadowsize = 0
            model.vis.quality.offsamples = 0
            model.vis.global_.offheight = max(model.vis.global_.offheight, h)
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, w)
            self._renderer = mujoco.Renderer(model, h, w)
        self._raw = None
        self._steps = 0

    @property
    def task(self) -> str:
        return self.spec.task

    def render(self) -> dict[str, np.ndarray]:
        images = {}
        for cam in self.spec.cameras:
            self._renderer.update_scene(self._env.data, camera=cam)
            img = self._renderer.render()
            if cam.startswith("corner"):  # these cameras are mounted upside down
                img = img[::-1, ::-1]
            images[f"observation.images.{cam}"] = np.ascontiguousarray(img)
        return images

    def _obs(self, render: bool = True) -> dict:
        raw = self._raw
        obs = self.render() if render and self._renderer is not None else {}
        obs["observation.state"] = raw[:4].astype(np.float32)  # hand xyz + gripper opening
        obs["observation.environment_state"] = raw.astype(np.float32)
        obs["task"] = self._instruction
        return obs

    def reset(self, seed: int) -> tuple[dict, dict]:
        self._env.seed(int(seed))
        raw, _ = self._env.reset()
        self._raw = raw
        self._steps = 0
        return self._obs(), {"seed": int(seed), "task": self.spec.task}

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict, float, bool, bool, dict]:
        """render=False leaves the camera images out of the observation: a caller that executes
        an action chunk looks only at the frame it replans from, and rendering is most of a step."""
        action = checked_action(self.spec.task, self._raw is not None, action, MetaWorld.action_dim)
        raw, reward, _, _, info = self._env.step(action)
        self._raw = raw
        self._steps += 1
        success = bool(info.get("success", 0.0))
        info = {"success": success, "steps": self._steps}
        return self._obs(render), float(reward), success, (not success and self._steps >= self.spec.max_episode_steps), info

    def expert_action(self) -> np.ndarray:
        if self._raw is None:
            raise RuntimeError(f"{self.spec.task}: call reset(seed) before expert_action()")
        return np.clip(quiet_expert(self._expert, self._raw), -1.0, 1.0).astype(np.float32)

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()
