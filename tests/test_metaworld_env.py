"""Meta-World adapter: shapes, upright cameras, seeding, unseen positions, goal visibility."""
import mujoco
import numpy as np
import pytest

from vla0.envs import EnvSpec, get_env
from vla0.envs.metaworld import TASKS, MetaWorldEnv


def spec(task, visible_goal=True, **kw):
    return EnvSpec("metaworld", task, options={"visible_goal": visible_goal}, **kw)


@pytest.fixture(scope="module")
def env():
    e = MetaWorldEnv(spec("reach-v3", cameras=("corner3", "topview"), image_size=(32, 48)))
    yield e
    e.close()


def test_reset_step_shapes(env):
    obs, info = env.reset(seed=3)
    for cam in ("corner3", "topview"):
        img = obs[f"observation.images.{cam}"]
        assert img.dtype == np.uint8 and img.shape == (32, 48, 3)
    assert obs["observation.state"].dtype == np.float32 and obs["observation.state"].shape == (4,)
    assert obs["observation.environment_state"].shape == (39,)
    assert obs["task"] == "reach the goal"
    obs, reward, term, trunc, info = env.step(np.zeros(4, np.float32))
    assert isinstance(reward, float) and isinstance(info["success"], bool) and not trunc
    a = env.expert_action()
    assert a.shape == (4,) and np.abs(a).max() <= 1


def test_step_without_render_leaves_images_out(env):
    env.reset(seed=3)
    obs = env.step(np.zeros(4, np.float32), render=False)[0]
    assert not any(k.startswith("observation.images.") for k in obs)
    assert obs["observation.state"].shape == (4,)
    assert "observation.images.topview" in env.step(np.zeros(4, np.float32))[0]


def test_corner_camera_turned_upright(env):
    obs, _ = env.reset(seed=0)
    raw = mujoco.Renderer(env._env.model, 32, 48)
    raw.update_scene(env._env.data, camera="corner3")
    img = raw.render()
    raw.close()
    np.testing.assert_array_equal(obs["observation.images.corner3"], img[::-1, ::-1])


def test_seeding(env):
    a, _ = env.reset(seed=7)
    b, _ = env.reset(seed=7)
    c, _ = env.reset(seed=8)
    np.testing.assert_array_equal(a["observation.environment_state"], b["observation.environment_state"])
    np.testing.assert_array_equal(a["observation.images.corner3"], b["observation.images.corner3"])
    assert not np.allclose(a["observation.environment_state"][-3:], c["observation.environment_state"][-3:])


def test_positions_not_limited_to_mt1_variants():
    env = MetaWorldEnv(spec("push-v3", cameras=()))
    goals = {tuple(env.reset(seed=s)[0]["observation.environment_state"][-3:].round(5)) for s in range(60)}
    env.close()
    assert len(goals) == 60  # MT1 would cycle through 50 fixed variants


def test_expert_succeeds_and_truncation():
    env = MetaWorldEnv(spec("reach-v3", cameras=(), max_episode_steps=200))
    env.reset(seed=1)
    for _ in range(200):
        _, _, term, trunc, info = env.step(env.expert_action())
        if term or trunc:
            break
    assert term and info["success"]
    env2 = MetaWorldEnv(spec("reach-v3", cameras=(), max_episode_steps=3))
    env2.reset(seed=1)
    outs = [env2.step(np.zeros(4))[3] for _ in range(3)]
    assert outs == [False, False, True]


def test_visible_goal_only_changes_rendering():
    specs = [spec("reach-v3", cameras=("corner3",), visible_goal=v) for v in (True, False)]
    envs = [MetaWorldEnv(s) for s in specs]
    obs = [e.reset(seed=2)[0] for e in envs]
    green = [((o["observation.images.corner3"][..., 1] > 200) & (o["observation.images.corner3"][..., 0] < 100)).sum() for o in obs]
    assert green[0] >= green[1] + 3  # a few more bright-green pixels: the goal
    for _ in range(10):
        steps = [e.step(np.array([0.5, 0.5, 0.0, 0.0])) for e in envs]
    np.testing.assert_array_equal(steps[0][0]["observation.environment_state"], steps[1][0]["observation.environment_state"])
    for e in envs:
        e.close()


def test_bad_names():
    with pytest.raises(ValueError, match="unknown metaworld task 'reach-v2'; valid tasks"):
        get_env("metaworld").check_task("reach-v2")
    with pytest.raises(ValueError, match="unknown env 'fly'; registered environments: libero, metaworld"):
        get_env("fly")
    with pytest.raises(ValueError, match="unknown metaworld option"):
        EnvSpec("metaworld", "reach-v3", options={"glow": True})
    with pytest.raises(ValueError, match="unknown metaworld camera"):
        spec("reach-v3", cameras=("front",))
    assert "reach-v3" in TASKS and "pick-place-v3" in TASKS


def test_missing_gl_library_names_the_fix(monkeypatch):
    from vla0.envs import gl
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.setattr(gl, "_loadable", lambda *names: False)
    with pytest.raises(OSError, match="libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1.*MUJOCO_GL"):
        gl.ensure_gl()
