"""One source of defaults: command-line options generated from the config dataclasses, recipes
between the defaults and the flags, old flag names still accepted; old policy folders load."""

import argparse
import json

import pytest

from vla0.config import PolicyConfig
from vla0.options import add_options, build
from vla0.train.recipes import RECIPES, recipe
from vla0.train.trainer import TrainConfig


def parse(argv, cls=TrainConfig):
    p = argparse.ArgumentParser()
    add_options(p, cls)
    return p.parse_args(argv)


REQUIRED = ["--model", "m", "--dataset", "d", "--out", "o"]


def test_defaults_come_from_the_dataclass_and_flags_override():
    cfg = build(TrainConfig, parse(REQUIRED))
    assert cfg == TrainConfig(model="m", dataset="d", out="o")
    cfg = build(TrainConfig, parse(REQUIRED + ["--bins", "250", "--image-size", "56x64", "--cameras", "a, b",
                                               "--betas", "0.8", "0.9", "--no-progress", "--lora-targets", "q_proj"]))
    assert (cfg.num_bins, cfg.image_size, cfg.cameras, cfg.betas, cfg.progress, cfg.lora_targets) == \
        (250, [56, 64], ["a", "b"], (0.8, 0.9), False, ["q_proj"])
    # old names of renamed options are aliases
    cfg = build(TrainConfig, parse(REQUIRED + ["--horizon", "4", "--action-horizon", "2"]))
    assert (cfg.chunk_size, cfg.n_action_steps) == (4, 2)
    with pytest.raises(SystemExit):
        parse(["--model", "m"])  # --dataset and --out are required


def test_a_recipe_sits_between_defaults_and_flags():
    args = parse(REQUIRED + ["--steps", "7"])
    cfg = build(TrainConfig, args, recipe("quickstart"))
    assert cfg.steps == 7  # the flag wins
    assert (cfg.chunk_size, cfg.num_bins, cfg.lr, cfg.crop_fraction) == (4, 100, 1e-3, 1.0)  # the recipe's
    assert cfg.mask_p_none == TrainConfig.__dataclass_fields__["mask_p_none"].default  # neither: the default
    weak = recipe("rl-weak")
    assert weak["n_action_steps"] == weak["chunk_size"] and weak["ensemble"] == 1 and weak["steps"] == 800
    with pytest.raises(ValueError, match="unknown recipe 'nope'; recipes: quickstart, rl-weak"):
        recipe("nope")
    recipe("quickstart")["steps"] = 1
    assert RECIPES["quickstart"]["steps"] == 2000  # callers get a copy


def test_train_recipe_error_before_any_work(tmp_path, capsys):
    from vla0.cli import main
    assert main(["train", "--recipe", "nope", "--model", str(tmp_path), "--dataset", str(tmp_path),
                 "--out", str(tmp_path / "r")]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err


def test_old_policy_folders_load(tmp_path):
    old = {"action_dim": 2, "cameras": ["front"], "action_stats": {"min": [0, 0], "max": [1, 1]}, "horizon": 4,
           "num_bins": 100, "action_horizon": 2, "ensemble": 1, "base_model": "b",
           "extra": {"camera_shapes": {"front": [64, 64]}, "state_dim": 4, "dataset": "d", "train": {"lr": 1.0}}}
    (tmp_path / "vla0_policy.json").write_text(json.dumps(old))
    cfg = PolicyConfig.load(tmp_path)
    assert (cfg.chunk_size, cfg.n_action_steps, cfg.camera_shapes, cfg.state_dim, cfg.dataset) == \
        (4, 2, {"front": [64, 64]}, 4, "d")
    assert cfg.training == {"train": {"lr": 1.0}}
    cfg.save(tmp_path)  # saved with the new names, loads back equal
    assert PolicyConfig.load(tmp_path) == cfg and "horizon" not in json.loads((tmp_path / "vla0_policy.json").read_text())
    with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
        PolicyConfig.from_dict({**old, "colour": 1})


def test_policy_config_names_conflicting_values():
    base = dict(action_dim=2, cameras=["a"], action_stats={"min": [0, 0], "max": [1, 1]}, chunk_size=4)
    with pytest.raises(ValueError, match=r"n_action_steps must be in 1..4 \(the chunk_size\), got 5"):
        PolicyConfig(**base, n_action_steps=5)
    with pytest.raises(ValueError, match=r"action_stats\['q01'\] must have 2 values"):
        PolicyConfig(**base, normalization="quantile")
