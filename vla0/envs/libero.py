"""LIBERO behind the environment interface (vla0.envs): the Libero family and its env.

Tasks are named "<suite>/<task id>", e.g. "libero_object/3", in LIBERO's own task order; the
suites are libero_spatial, libero_object, libero_goal, libero_10 and libero_90.

The published evaluation protocol (VLA-0, openpi, OpenVLA-OFT) is the default, protocol
"published"; every choice below is it unless said otherwise:
- trial i of a task starts from the suite's official init state i (50 per task): the episode
  seed IS the init-state index (layout "official"), so `vla0 eval` starts at seed 0 here;
- the env is seeded with 7 once per task, as VLA-0's and openpi's harnesses do, and trial i runs
  after i earlier resets have drawn from its RNG. Our workers may run a task's trials in any
  order: a worker that skips trials replays their resets (LiberoEnv.reset), so every trial sees
  the state the official harness gives it, whichever trials its worker ran before (and a resumed
  evaluation gives the same numbers). Protocol "lerobot" and the perturbed layout reseed at
  every reset;
- cameras "image" (agentview) and "image2" (robot0_eye_in_hand), the names of the LeRobot-format
  LIBERO datasets on the hub, rendered at the spec's size (the protocol's is 256x256) and rotated
  180 degrees (LIBERO's images are upside down); only when the step is asked to render;
- 10 steps of [0,0,0,0,0,0,-1] (objects settle, some drop up to 10 cm) inside reset, before the
  policy acts; they do not count against the cap;
- step caps 220 / 280 / 300 / 520 / 400 (spatial / object / goal / 10 / 90);
- the gripper command snapped by sign: > 0 closes (+1), otherwise opens (-1); the other six
  values are clipped to [-1, 1] (OSC_POSE deltas: 1 = 5 cm or 0.5 rad);
- observation.state = end-effector position (3) + axis-angle of its quaternion (3) + the two
  gripper finger joint positions (2);
- success = LIBERO's done flag (its goal predicates hold).
The env is built with robosuite's hard_reset=False: LIBERO's default re-loads the whole MuJoCo
model from XML at every reset (about 5 s here, more than the physics of a 100-step episode);
a soft reset (mj_resetData) followed by set_init_state reaches the same state, and the expert's
episodes from it are identical (tests/test_libero.py; bench/libero_rollouts.py measures it).
Protocol "lerobot" is LeRobot's LIBERO evaluation: the same, except a 280 cap on libero_spatial
and 360x360 renders (pass --image-size 360 360). results.json names the protocol it ran.

Layout "perturbed" (the default for `vla0 collect` and `vla0 rl` rollouts) starts from official init state
(seed mod 50) and then moves every free object by 2-4 cm in a random direction drawn from the
seed, so demonstrations come from layouts evaluation never uses (env.reset()'s own layouts lie
within 3-7 mm of the official ones, too close to count as held out).
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass

import numpy as np

from vla0.envs.base import EnvFamily, EnvSpec, checked_action
from vla0.envs.libero_install import import_libero

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
INIT_STATES = 50  # official init states per task
# dataset camera name -> LIBERO camera: HuggingFaceVLA/libero's names, and physical-intelligence/libero's
# "wrist_image" (its "image" is the agentview too), so a policy trained on either is fed the right views
CAMERAS = {"image": "agentview", "image2": "robot0_eye_in_hand", "wrist_image": "robot0_eye_in_hand"}
WAIT_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], np.float32)


@dataclass(frozen=True)
class Protocol:
    name: str
    max_steps: dict  # suite -> policy steps
    render_size: int  # what the protocol renders (the spec's image_size is what we render)
    wait_steps: int = 10
    seed: int = 7
    seed_once: bool = True  # seeded once per task (trials in order); False: reseeded before every reset


PROTOCOLS = {
    "published": Protocol("published", {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300,
                                        "libero_10": 520, "libero_90": 400}, 256),
    "lerobot": Protocol("lerobot", {"libero_spatial": 280, "libero_object": 280, "libero_goal": 300,
                                    "libero_10": 520, "libero_90": 400}, 360, seed_once=False),
}
LAYOUTS = ("official", "perturbed")
PERTURB_M = (0.02, 0.04)  # distance each free object is moved in a perturbed layout


def split_task(task: str) -> tuple[str, int]:
    suite, _, tid = task.partition("/")
    return suite, int(tid)


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternion -> axis * angle, as robosuite and the published protocol do."""
    w = float(np.clip(quat[3], -1.0, 1.0))
    den = np.sqrt(1.0 - w * w)
    if np.isclose(den, 0.0):
        return np.zeros(3)
    return quat[:3] * 2.0 * np.arccos(w) / den


class Libero(EnvFamily):
    name = "libero"
    fps = 20  # LIBERO's control frequency
    action_dim = 7  # OSC_POSE deltas (x, y, z, axis-angle) and the gripper
    action_low = np.full(7, -1.0, np.float32)
    action_high = np.full(7, 1.0, np.float32)
    cameras = tuple(CAMERAS)
    default_cameras = ("image", "image2")
    default_image_size = (256, 256)  # the published protocol renders 256x256
    robot_type = "panda"
    state_names = ["eef_x", "eef_y", "eef_z", "eef_axis_angle_x", "eef_axis_angle_y", "eef_axis_angle_z",
                   "gripper_qpos_left", "gripper_qpos_right"]
    action_names = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
    extra_features = {}
    has_expert = True  # LIBERO-Object only (check_expert)
    options = {"protocol": "published", "layout": "official"}
    training_options = {"layout": "perturbed"}  # demonstrations and RL rollouts never start from evaluation layouts
    eval_seed = 0  # trial i = official init state i
    eval_episodes = INIT_STATES  # the published protocol runs all 50 init states of each task

    def __init__(self):
        self._tasks: dict[str, list] | None = None

    def _suites(self) -> dict[str, list]:
        """suite -> LIBERO's Task records in its official order (loads LIBERO's task tables)."""
        if self._tasks is None:
            import_libero()
            from libero.libero.benchmark import get_benchmark_dict
            with contextlib.redirect_stdout(io.StringIO()):  # each suite prints its task order
                suites = {s: get_benchmark_dict()[s]() for s in SUITES}
            self._tasks = {s: [b.get_task(i) for i in range(b.n_tasks)] for s, b in suites.items()}
        return self._tasks

    def suites(self) -> dict[str, list[str]]:
        return {s: [f"{s}/{i}" for i in range(len(ts))] for s, ts in self._suites().items()}

    def tasks(self) -> list[str]:
        return [t for ts in self.suites().values() for t in ts]

    def check_task(self, task: str) -> None:
        suite, _, tid = task.partition("/")
        if suite not in SUITES:
            raise ValueError(f"unknown LIBERO suite {suite!r} in task {task!r}; suites: {', '.join(SUITES)} "
                             "(tasks are named SUITE/ID, e.g. libero_object/3)")
        n = len(self._suites()[suite])
        if not tid.isdigit() or int(tid) >= n:
            raise ValueError(f"unknown LIBERO task {task!r}: {suite} has task ids 0..{n - 1}")

    def check_options(self, options: dict) -> None:
        if options.get("protocol", "published") not in PROTOCOLS:
            raise ValueError(f"unknown LIBERO protocol {options['protocol']!r}; valid: {', '.join(PROTOCOLS)}")
        if options.get("layout", "official") not in LAYOUTS:
            raise ValueError(f"unknown LIBERO layout {options['layout']!r}; valid: {', '.join(LAYOUTS)}")

    def check_seeds(self, seed: int, episodes: int, options: dict) -> None:
        if options.get("layout", "official") == "official" and not (0 <= seed and seed + episodes <= INIT_STATES):
            raise ValueError(f"LIBERO has {INIT_STATES} official init states per task (0..{INIT_STATES - 1}); "
                             f"{episodes} trials from init state {seed} would need {seed}..{seed + episodes - 1}")

    def check_expert(self, tasks: list[str], who: str) -> None:
        other = [t for t in tasks if split_task(t)[0] != "libero_object"]
        if other:
            raise ValueError(f"{who}: the LIBERO scripted expert covers libero_object only, not {', '.join(other)}")

    def task_fields(self, task: str) -> dict:
        t = self._suites()[split_task(task)[0]][split_task(task)[1]]
        return {"suite": split_task(task)[0], "task_id": split_task(task)[1], "task_name": t.name}

    def episode_fields(self, task: str, seed: int, options: dict) -> dict:
        suite, tid = split_task(task)
        return {"suite": suite, "task_id": tid, "init_state": seed % INIT_STATES,
                "layout": options.get("layout", "official")}

    def instruction(self, task: str) -> str:
        self.check_task(task)
        suite, tid = split_task(task)
        return self._suites()[suite][tid].language

    def max_episode_steps(self, task: str, protocol: str = "published") -> int:
        return PROTOCOLS[protocol].max_steps[split_task(task)[0]]

    def spec(self, task: str, cameras=(), image_size=(256, 256), max_episode_steps: int | None = None,
             **options) -> EnvSpec:
        self.check_options(options)
        if max_episode_steps is None:
            max_episode_steps = self.max_episode_steps(task, options.get("protocol", "published"))
        return super().spec(task, cameras, image_size, max_episode_steps, **options)

    def make(self, spec: EnvSpec) -> "LiberoEnv":
        return LiberoEnv(spec, self)


class LiberoEnv:
    def __init__(self, spec: EnvSpec, family: Libero):
        root = import_libero()
        from libero.libero.envs import OffScreenRenderEnv
        self.spec = spec
        self.protocol = PROTOCOLS[spec.options["protocol"]]
        suite, tid = split_task(spec.task)
        task = family._suites()[suite][tid]
        self._instruction = task.language
        self._init_states = np.asarray(self._load_init_states(root, task))
        h, w = spec.image_size
        self._camera_obs = [f"{CAMERAS[c]}_image" for c in spec.cameras]
        self._env = OffScreenRenderEnv(bddl_file_name=os.path.join(root.get_libero_path("bddl_files"),
                                                                   task.problem_folder, task.bddl_file),
                                       camera_names=[CAMERAS[c] for c in spec.cameras] or ["agentview"],
                                       camera_heights=h, camera_widths=w, use_camera_obs=bool(spec.cameras),
                                       hard_reset=False)
        self._render_next = True
        self._next_trial = None  # with a protocol seeded once per task: the trial whose RNG state the env is at
        self._raw = None
        self._steps = 0
        self._expert = None

    def _render_lazily(self) -> None:
        """Render the cameras only in steps that are asked to. robosuite renders its camera
        observations at one of the physics substeps of a step (which one depends on its sampling
        clock), and the protocol's images are those; so rather than rendering ourselves after
        the step, its camera sensors are wrapped to render only when wanted, leaving its clock
        and thus the frames exactly as LIBERO's. (A hard reset rebuilds the observables, so
        this is redone at every reset; the wrapped sensor is kept, so wrappers never nest.)"""
        h, w = self.spec.image_size
        for name in self._camera_obs:
            observable = self._env.env._observables[name]
            real = getattr(observable, "_vla0_sensor", None) or observable._sensor
            observable._vla0_sensor = real

            def sensor(cache, real=real, blank=np.zeros((h, w, 3), np.uint8)):
                return real(cache) if self._render_next else blank
            sensor.__modality__ = real.__modality__
            observable._sensor = sensor

    @staticmethod
    def _load_init_states(root, task):
        import torch
        path = os.path.join(root.get_libero_path("init_states"), task.problem_folder, task.init_states_file)
        return torch.load(path, weights_only=False)

    @property
    def sim(self):
        return self._env.env.sim

    @property
    def raw_env(self):
        """LIBERO's own environment (robosuite), for the expert and for tests."""
        return self._env.env

    def images(self) -> dict[str, np.ndarray]:
        """The cameras of the last rendered step: LIBERO's images are upside down, the protocol
        rotates them 180 degrees."""
        return {f"observation.images.{cam}": np.ascontiguousarray(self._raw[name][::-1, ::-1])
                for cam, name in zip(self.spec.cameras, self._camera_obs)}

    def state(self) -> np.ndarray:
        raw = self._raw
        return np.concatenate([raw["robot0_eef_pos"], quat2axisangle(raw["robot0_eef_quat"]),
                               raw["robot0_gripper_qpos"]]).astype(np.float32)

    def _obs(self, render: bool) -> dict:
        obs = self.images() if render else {}
        obs["observation.state"] = self.state()
        obs["task"] = self._instruction
        return obs

    def reset(self, seed: int) -> tuple[dict, dict]:
        seed = int(seed)
        layout = self.spec.options["layout"]
        if layout == "official" and not 0 <= seed < len(self._init_states):
            raise ValueError(f"{self.spec.task}: official init states are 0..{len(self._init_states) - 1}, got {seed}")
        self._seed_for(seed, layout)
        self._env.reset()
        self._render_lazily()
        self._render_next = self.protocol.wait_steps == 0  # only the frames after the wait steps are seen
        self._raw = self._env.set_init_state(self._init_states[seed % len(self._init_states)])
        if layout == "perturbed":
            self._raw = self._perturb(np.random.default_rng(seed))
        for i in range(self.protocol.wait_steps):
            self._render_next = i == self.protocol.wait_steps - 1
            self._raw, *_ = self._env.step(WAIT_ACTION)
        self._steps = 0
        self._expert = None
        info = {"seed": seed, "task": self.spec.task, "init_state": seed % len(self._init_states), "layout": layout}
        return self._obs(bool(self.spec.cameras)), info

    def _seed_for(self, trial: int, layout: str) -> None:
        """Bring the env's RNG to where the official harness has it before trial `trial`'s reset."""
        if not (self.protocol.seed_once and layout == "official"):
            self._env.seed(self.protocol.seed)
            return
        if self._next_trial is None or trial < self._next_trial:
            self._env.seed(self.protocol.seed)
            self._next_trial = 0
        while self._next_trial < trial:  # the resets of the trials this worker did not run
            self._env.reset()
            self._next_trial += 1
        self._next_trial = trial + 1

    def _perturb(self, rng: np.random.Generator) -> dict:
        """Move each free object (its free joint's x, y) by PERTURB_M in a random direction."""
        env = self._env.env
        for obj in env.objects_dict.values():
            for joint in obj.joints:
                qpos = np.array(self.sim.data.get_joint_qpos(joint), dtype=np.float64)
                if qpos.shape != (7,):
                    continue  # not a free joint
                angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(*PERTURB_M)
                qpos[:2] += dist * np.array([np.cos(angle), np.sin(angle)])
                self.sim.data.set_joint_qpos(joint, qpos)
        return self._env.regenerate_obs_from_state(self.sim.get_state().flatten())

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict, float, bool, bool, dict]:
        action = checked_action(self.spec.task, self._raw is not None, action, Libero.action_dim)
        action[-1] = 1.0 if action[-1] > 0 else -1.0
        self._render_next = render
        self._raw, reward, done, _ = self._env.step(action)
        self._steps += 1
        success = bool(done)
        truncated = not success and self._steps >= self.spec.max_episode_steps
        return self._obs(render and bool(self.spec.cameras)), float(reward), success, truncated, \
            {"success": success, "steps": self._steps}

    def expert_action(self) -> np.ndarray:
        if self._raw is None:
            raise RuntimeError(f"{self.spec.task}: call reset(seed) before expert_action()")
        if self._expert is None:
            from vla0.envs.libero_expert import ObjectExpert
            self._expert = ObjectExpert(self._env.env)  # plans from the poses after the wait steps
        return self._expert.act()

    def close(self):
        if self._env is not None:
            self._env.close()
            self._env = None
