"""Installing vla0 with one's own torch, and without the simulators."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_torch_is_a_range_and_simulation_an_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {d.split("=")[0].split(">")[0].split("<")[0].strip(): d for d in project["dependencies"]}
    assert "==" not in deps["torch"] and ">=" in deps["torch"]
    assert not {"metaworld", "mujoco", "gymnasium"} & set(deps)
    assert {"metaworld==3.1.1", "gymnasium"} <= set(project["optional-dependencies"]["sim"])
    pins = (ROOT / "requirements.txt").read_text().split()
    assert "metaworld==3.1.1" in pins and "mujoco==3.3.0" in pins  # make test / quickstart install them
    assert "torch==2.13.0" in (ROOT / "Makefile").read_text()  # the exact local pin stays there


def test_a_missing_simulator_is_one_clear_error(monkeypatch):
    import pytest

    from vla0.envs import base
    monkeypatch.setitem(base._REGISTRY, "nosim", "vla0_no_such_simulator.family:Family")
    with pytest.raises(ValueError, match="env 'nosim' needs the vla0_no_such_simulator package"):
        base.get_env("nosim")
