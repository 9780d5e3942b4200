"""LIBERO: the published protocol checked against LIBERO's own environment, the scripted expert,
a tiny evaluation and collection, and bad input refused before any env is built.

Building a LIBERO env costs 5-21 s here, so the tests share two built envs (module fixtures)."""
import importlib.util
import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

pytest.importorskip("libero", reason="LIBERO is installed by `make venv` (pip install -e '.[libero]')")

from vla0.envs import get_env  # noqa: E402
from vla0.envs.libero import PROTOCOLS, LiberoEnv  # noqa: E402

TASK = "libero_object/0"  # pick up the alphabet soup and place it in the basket


@pytest.fixture(scope="module")
def family():
    return get_env("libero")


@pytest.fixture(scope="module")
def env(family):
    e = family.make(family.spec(TASK, ("image", "image2"), (64, 64)))
    yield e
    e.close()


def raw_libero_env(task):
    """LIBERO's own env as the published protocol's scripts build it: both cameras in its
    observations, seeded with 7."""
    import os

    from libero.libero import get_libero_path
    from libero.libero.envs import OffScreenRenderEnv
    raw = OffScreenRenderEnv(bddl_file_name=os.path.join(get_libero_path("bddl_files"), task.problem_folder,
                                                         task.bddl_file), camera_heights=64, camera_widths=64)
    raw.seed(7)
    return raw


def by_hand_state(obs):
    """eef position + axis-angle + finger joints, the axis-angle written out as the published
    protocol computes it from LIBERO's (x, y, z, w) quaternion: angle 2 acos(w), axis xyz / sin(angle / 2)."""
    x, y, z, w = obs["robot0_eef_quat"]
    angle = 2 * np.arccos(w)
    rotvec = np.array([x, y, z]) / np.sin(angle / 2) * angle
    # the same rotation as the quaternion's (scipy may write it with the opposite axis near pi)
    assert Rotation.from_rotvec(rotvec).approx_equal(Rotation.from_quat([x, y, z, w]), atol=1e-6)
    return np.concatenate([obs["robot0_eef_pos"], rotvec, obs["robot0_gripper_qpos"]])


def test_protocol_matches_the_raw_simulator(family, env):
    from libero.libero.benchmark import get_benchmark_dict
    task = family._suites()["libero_object"][0]
    raw = raw_libero_env(task)
    try:
        init = get_benchmark_dict()["libero_object"]().get_task_init_states(0)
        raw.reset()
        raw_obs = raw.set_init_state(init[3])
        for _ in range(10):  # the wait steps
            raw_obs, *_ = raw.step([0, 0, 0, 0, 0, 0, -1])
        obs, info = env.reset(3)
        assert info["init_state"] == 3 and obs["task"] == task.language
        # images: LIBERO's are upside down; the protocol rotates both 180 degrees
        for ours, theirs in (("image", "agentview_image"), ("image2", "robot0_eye_in_hand_image")):
            assert obs[f"observation.images.{ours}"].shape == (64, 64, 3)
            np.testing.assert_array_equal(obs[f"observation.images.{ours}"], raw_obs[theirs][::-1, ::-1])
        np.testing.assert_allclose(obs["observation.state"], by_hand_state(raw_obs), atol=1e-5)
        # the gripper is snapped by sign: 0.2 closes fully, -0.1 and 0 open fully
        for action, snapped in (([0.3, -0.2, 0.1, 0.05, 0, -0.05, 0.2], 1), ([0.1, 0.1, 0, 0, 0, 0, -0.1], -1),
                                ([0, 0, 0.5, 0, 0, 0, 0.0], -1)):
            obs, _, term, trunc, info = env.step(np.array(action), render=False)
            raw_obs, _, done, _ = raw.step(np.r_[action[:6], snapped])
            np.testing.assert_allclose(obs["observation.state"], by_hand_state(raw_obs), atol=1e-5)
            assert "observation.images.image" not in obs  # not rendered when not asked
            assert not term and not done and not trunc
        obs, *_ = env.step(np.zeros(7), render=True)
        raw_obs, *_ = raw.step([0, 0, 0, 0, 0, 0, -1])
        np.testing.assert_array_equal(obs["observation.images.image2"], raw_obs["robot0_eye_in_hand_image"][::-1, ::-1])
    finally:
        raw.close()


def test_step_caps_and_truncation(family, env, monkeypatch):
    caps = {s: family.spec(f"{s}/0").max_episode_steps
            for s in ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")}
    assert caps == {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
    assert family.spec("libero_spatial/0", protocol="lerobot").max_episode_steps == 280
    assert PROTOCOLS["published"].wait_steps == 10 and PROTOCOLS["published"].seed == 7
    monkeypatch.setattr(env, "spec", family.spec(TASK, ("image", "image2"), (64, 64), max_episode_steps=3))
    env.reset(0)
    ends = [env.step(np.zeros(7), render=False)[3] for _ in range(3)]
    assert ends == [False, False, True]  # the wait steps did not count


def test_expert_succeeds_on_an_official_init_state(env):
    env.reset(0)
    for _ in range(280):
        obs, _, term, trunc, info = env.step(env.expert_action(), render=False)
        if term or trunc:
            break
    assert term and info["success"] and info["steps"] < 200


def test_perturbed_layouts_move_the_objects(family, env, monkeypatch):
    def positions(e):
        raw = e.raw_env
        return np.array([raw.sim.data.body_xpos[raw.obj_body_id[n]][:2] for n in sorted(raw.obj_body_id)])
    env.reset(5)
    official = positions(env)
    monkeypatch.setattr(env, "spec", family.spec(TASK, ("image", "image2"), (64, 64), layout="perturbed"))
    env.reset(5)
    shift = np.linalg.norm(positions(env) - official, axis=1)
    assert shift.min() > 0.01 and shift.max() < 0.06, shift


def test_main_suites_build_offline(family):
    """libero_object is built by the fixture; the other three main suites here (5-21 s each).
    libero_90 shares their scenes: its task files and 50 init states per task are checked."""
    for task in ("libero_spatial/0", "libero_goal/0", "libero_10/0"):
        e = family.make(family.spec(task))
        try:
            obs, info = e.reset(49)
            assert obs["observation.state"].shape == (8,) and obs["task"] == family.instruction(task)
            assert not any(k.startswith("observation.images.") for k in obs)  # no camera asked for
        finally:
            e.close()
    from vla0.envs.libero_install import import_libero
    root = import_libero()
    import os
    libero_90 = family._suites()["libero_90"]
    assert len(libero_90) == 90
    for t in libero_90:
        assert os.path.exists(os.path.join(root.get_libero_path("bddl_files"), t.problem_folder, t.bddl_file))
    assert len(LiberoEnv._load_init_states(root, libero_90[0])) == 50


def test_tiny_evaluation_and_collection(tmp_path):
    from vla0.data.lerobot_dataset import load_lerobot
    from vla0.envs.collect import collect
    from vla0.eval.baselines import ExpertPolicy
    from vla0.eval.evaluate import evaluate
    res = evaluate(ExpertPolicy(), ["libero_object/0"], 1, out=tmp_path / "eval", env="libero", cameras=(),
                   num_workers=0, videos=0, progress=False)
    on_disk = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert on_disk["episodes"] == res["episodes"]
    assert on_disk["seed"] == 0 and on_disk["env_options"] == {"protocol": "published", "layout": "official"}
    assert on_disk["tasks"]["libero_object/0"]["success_rate"] == 1.0
    assert on_disk["tasks"]["libero_object/0"]["suite"] == "libero_object"
    assert on_disk["suites"]["libero_object"]["episodes"] == 1
    ep = on_disk["episodes"][0]
    assert (ep["suite"], ep["task_id"], ep["init_state"], ep["success"]) == ("libero_object", 0, 0, True)

    out = collect(["libero_object/0"], 1, 7, tmp_path / "demos", env="libero", image_size=(32, 32),
                  num_workers=0, progress=False)
    data = load_lerobot(out)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert {"observation.images.image", "observation.images.image2", "observation.state", "action"} <= set(info["features"])
    assert info["features"]["observation.state"]["shape"] == [8] and info["features"]["action"]["shape"] == [7]
    assert json.loads((out / "meta" / "vla0.json").read_text())["layout"] == "perturbed"
    assert data.action.shape[1] == 7 and set(np.unique(data.action[:, 6])) <= {-1.0, 1.0}
    assert data.images["observation.images.image"].shape[1:] == (32, 32, 3) and data.state.shape[1] == 8
    assert data.tasks == ["pick up the alphabet soup and place it in the basket"]


@pytest.mark.parametrize("call,message", [
    (lambda f: f.select_tasks(None, "libero_nope"), "unknown libero suite 'libero_nope'; valid suites: libero_spatial"),
    (lambda f: f.select_tasks(["12"], "libero_object"), None),
    (lambda f: f.check_task("libero_object/12"), "libero_object has task ids 0..9"),
    (lambda f: f.check_seeds(0, 51, {}), "50 official init states per task"),
    (lambda f: f.check_seeds(45, 10, {"layout": "official"}), "would need 45..54"),
    (lambda f: f.spec(TASK, protocol="openvla"), "unknown LIBERO protocol 'openvla'; valid: published, lerobot"),
    (lambda f: f.check_expert(["libero_goal/1"], "collect"), "covers libero_object only"),
])
def test_bad_input_before_any_env(family, call, message):
    if message is None:
        assert call(family) == ["libero_object/12"]  # ids are qualified here, checked by check_tasks
        return
    with pytest.raises(ValueError, match=message):
        call(family)


def test_valid_seeds_pass(family):
    family.check_seeds(0, 50, {})  # all 50 official init states
    family.check_seeds(10**6, 3, {"layout": "perturbed"})  # perturbed layouts take any seed


def test_policy_mismatch_and_missing_libero_fail_before_any_env(tmp_path, monkeypatch, capsys, tiny_policy_dir):
    import vla0.eval.evaluate as ev
    from vla0.cli import main
    from vla0.envs import libero_install

    monkeypatch.setattr(ev, "open_pool", lambda *a, **k: pytest.fail("an env pool was started"))

    class FourDim:
        name, needs_images = "four", True
        config = type("C", (), {"action_dim": 4})()

        def reset(self, env_ids=None):
            pass
    with pytest.raises(ValueError, match="writes 4-dimensional actions; libero takes 7"):
        ev.evaluate(FourDim(), [TASK], 1, out=tmp_path, env="libero")
    with pytest.raises(ValueError, match=r"unknown libero camera\(s\) \['front'\]; valid: image, image2, wrist_image"):
        ev.evaluate(ExpertLike(), [TASK], 1, out=tmp_path, env="libero", cameras=("front",))
    # the CLI: a policy recorded with cameras front/wrist and 4-dim actions
    assert main(["eval", "--env", "libero", "--suite", "libero_object", "--tasks", "0", "--trials", "2",
                 "--policy", str(tiny_policy_dir), "--out", str(tmp_path / "e")]) == 2
    assert "writes 4-dimensional actions; libero takes 7" in capsys.readouterr().err
    assert main(["eval", "--env", "libero", "--suite", "libero_object", "--trials", "51", "--policy", "random",
                 "--out", str(tmp_path / "e")]) == 2
    assert "50 official init states per task" in capsys.readouterr().err
    assert main(["collect", "--env", "libero", "--suite", "libero_goal", "--episodes", "1",
                 "--out", str(tmp_path / "d")]) == 2
    assert "covers libero_object only" in capsys.readouterr().err

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "robosuite" else real(name, *a))
    with pytest.raises(ImportError, match=r"LIBERO is not installed \(missing: robosuite\); install it with: pip install"):
        libero_install.check_installed()


class ExpertLike:
    name, needs_images, acts_in_env = "expert", False, True

    def reset(self, env_ids=None):
        pass


def test_rl_one_iteration(tiny_model_dir, tmp_path):
    """`vla0 rl --env libero` through the generic path: rollouts from perturbed layouts (never
    the official init states evaluation uses), one GRPO update, a policy folder at the end."""
    import shutil

    from vla0.config import PolicyConfig
    from vla0.rl.trainer import RLConfig, train_rl
    folder = tmp_path / "policy"
    shutil.copytree(tiny_model_dir, folder)
    PolicyConfig(action_dim=7, cameras=["image", "image2"], chunk_size=2, num_bins=100, image_size=[32, 32],
                 action_stats={"min": [-1.0] * 7, "max": [1.0] * 7},
                 camera_shapes={"image": [32, 32], "image2": [32, 32]}).save(folder)
    cfg = RLConfig(policy=str(folder), tasks=["libero_object/0"], out=str(tmp_path / "rl"), env="libero",
                   group_size=2, groups_per_batch=1, max_groups_factor=1, max_episode_steps=2, iterations=1,
                   lr=1e-3, batch_envs=2, workers=0, progress=False)
    exported = train_rl(cfg)
    rows = [json.loads(line) for line in (tmp_path / "rl" / "rl_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1]
    assert json.loads((tmp_path / "rl" / "rl_config.json").read_text())["eval_seed"] == 0  # LIBERO's trial 0
    assert PolicyConfig.load(exported).action_dim == 7


def test_soft_reset_after_other_episodes_equals_a_fresh_hard_reset(family, env):
    """Our env resets softly (no model reload, vla0/envs/libero.py). After the episodes of the
    tests above, init state 4 must still give what a fresh LIBERO env with its default hard reset
    gives: the same frames and states, also along an expert episode's first 30 steps."""
    from libero.libero.benchmark import get_benchmark_dict
    raw = raw_libero_env(family._suites()["libero_object"][0])
    try:
        raw.reset()
        raw_obs = raw.set_init_state(get_benchmark_dict()["libero_object"]().get_task_init_states(0)[4])
        for _ in range(10):
            raw_obs, *_ = raw.step([0, 0, 0, 0, 0, 0, -1])
        obs, _ = env.reset(4)
        for t in range(30):
            np.testing.assert_allclose(obs["observation.state"], by_hand_state(raw_obs), atol=1e-6, err_msg=f"step {t}")
            if t in (0, 29):
                np.testing.assert_array_equal(obs["observation.images.image"], raw_obs["agentview_image"][::-1, ::-1])
            action = env.expert_action()
            obs, *_ = env.step(action, render=t == 28)
            raw_obs, *_ = raw.step(np.r_[action[:6], 1.0 if action[6] > 0 else -1.0])
    finally:
        raw.close()
