"""VLA-0's released run folders: `vla0 import-vla0`, its safe readers, and prompt parity with the
official code.

tests/data/vla0_official_golden.json was made OUTSIDE this project by running NVlabs/vla0's own
QwenActor code (rv_train/models/qwen/model.py at 731bef2: get_qwen_inputs, get_text_action and the
label masking of forward) with a stand-in processor: the embedded tiny model's tokenizer and PIL
image processor (init_model("tiny", seed=0)) plus Qwen2.5-VL's chat template text, add_vision_id
on, H=8, D=7, B=1000, two random 256 px frames (seed 22) centre-cropped to 224 and tiled, the 10%
unmasked branch (no masked characters). Only the resulting values are stored here.
"""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from vla0.cli import main
from vla0.config import PolicyConfig
from vla0.model.official import RELEASED, UnsafePickle, import_run, load_plain_pickle, read_run
from vla0.processor import ActionProcessor

GOLDEN = json.loads((Path(__file__).parent / "data" / "vla0_official_golden.json").read_text())


class _FakeCfgNode(dict):
    """What `vars(cfg)` of a yacs CfgNode holds: its attributes, not its items."""


def write_official_run(folder: Path, model_dir: Path, dim: int = 7, stats=None, with_yaml: bool = True,
                       processor: bool = True) -> Path:
    """An official run folder, laid out as rv_train/train.py's save_checkpoint writes one."""
    from vla0.model.vlm import load_vlm
    vlm = load_vlm(model_dir, dtype=torch.bfloat16)  # the official model is held in bf16
    weights = folder / "model_last"
    vlm.model.save_pretrained(weights)
    if processor:  # QwenActor.save_pretrained saves the processor beside the weights
        vlm.save_processor(weights)
    opt = torch.optim.AdamW(vlm.model.parameters(), lr=5e-6, weight_decay=1e-10)
    cfg = vars(_FakeCfgNode())
    cfg.update({"__immutable__": True, "__deprecated_keys__": set(), "__renamed_keys__": {}, "__new_allowed__": False})
    torch.save({"cfg": cfg, "epoch": 23, "model_state": None, "optimizer_state": opt.state_dict(),
                "lr_sched_state": None}, folder / "model_last.pth")
    low = np.array(GOLDEN["action_min"][:dim], np.float32)
    stats = stats if stats is not None else {"out_ori_act": {"min": low, "max": -low}}
    with open(folder / "dataset_stats.pkl", "wb") as f:
        pickle.dump(stats, f)
    if with_yaml:
        (folder / "config.yaml").write_text(
            "DATALOADER:\n  ROBOVERSE:\n"
            "    cfg_opts: IMAGE.crop_img:0.875:IMAGE.img_size:224:IMAGE.cam_list:('3p1','3p2')\n"
            "MODEL:\n  QWEN:\n    add_vision_id: true\n    horizon: 8\n    num_bins_actions: 1000\n"
            f"    original_action_dim: {dim}\n    num_cam: 2\n    tiled_rgb_imgs: true\n    rgb_img_size: 224,224\n"
            "    qwen_model_id: Qwen/Qwen2.5-VL-3B-Instruct\n")
    return folder


@pytest.fixture(scope="module")
def official_run(tiny_model_dir, tmp_path_factory):
    return write_official_run(tmp_path_factory.mktemp("official") / "run", tiny_model_dir)


@pytest.fixture(scope="module")
def imported(official_run, tmp_path_factory):
    return import_run(official_run, tmp_path_factory.mktemp("imported") / "policy")


def test_import_records_the_official_prompt_and_decoding(official_run, imported):
    config = PolicyConfig.load(imported)
    assert (config.chunk_size, config.action_dim, config.num_bins) == (8, 7, 1000)
    assert config.vision_id and config.image_size == [224, 224] and config.crop_fraction == 0.875
    assert config.cameras == ["image", "image2"] and config.image_layout == "tile"
    assert (config.ensemble, config.ensemble_weights, config.n_action_steps) == (8, "vla0", 1)
    np.testing.assert_allclose(config.action_stats["min"], np.float32(GOLDEN["action_min"]))
    official = config.training["official"]
    assert official["epoch"] == 23 and official["sources"]["add_vision_id"] == "config.yaml"
    # the weights are the run's, unchanged (bf16 as saved), and load as a vla0 policy
    for f in (official_run / "model_last").glob("*.safetensors"):
        assert (imported / f.name).read_bytes() == f.read_bytes()
    from vla0.policy.policy import VLA0Policy
    policy = VLA0Policy.from_pretrained(imported, dtype=torch.bfloat16)
    assert policy.processor.encoder.mask_id == policy.processor.tokenizer.convert_tokens_to_ids("?")


def test_prompt_matches_the_official_code_token_for_token(imported):
    from vla0.model.vlm import load_processor
    config = PolicyConfig.load(imported)
    config.action_stats = {"min": GOLDEN["action_min"], "max": GOLDEN["action_max"]}
    processor = ActionProcessor(config, *load_processor(imported))
    rng = np.random.default_rng(GOLDEN["frames_seed"])
    rng.random((GOLDEN["H"], GOLDEN["D"]))  # the golden script drew its actions from this generator first
    frames = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(2)]
    obs = {"observation.images.image": frames[0], "observation.images.image2": frames[1], "task": GOLDEN["task"]}
    prompt = processor.prompts(obs)[0]
    assert prompt.input_ids == GOLDEN["prompt_ids"]
    assert prompt.image_grid_thw.tolist() == GOLDEN["image_grid_thw"]
    assert float(prompt.pixel_values.double().sum()) == pytest.approx(GOLDEN["pixel_sum"], rel=1e-6)
    actions = np.asarray(GOLDEN["actions"], np.float32)
    assert processor.codec.encode(actions) == GOLDEN["action_text"]
    ex = processor.training_example(frames, GOLDEN["task"], actions, np.random.default_rng(0), mask_max_frac=0.0)
    n = len(ex.input_ids)
    # vla0's sample is the official one up to and including the closing <|im_end|>; the official
    # text goes on with the template's "\n", which it also trains on
    assert ex.input_ids == GOLDEN["train_ids"][:n]
    assert processor.tokenizer.decode(GOLDEN["train_ids"][n:]) == "\n"
    # the same action tokens and <|im_end|> carry the loss (the official +3 after the prompt assumes
    # Qwen's one-token "assistant": with the tiny tokenizer's "ass"+"istant" it leaks one token)
    action_span = slice(ex.prompt_len, n)
    assert ex.labels[action_span] == GOLDEN["train_labels"][action_span]
    assert all(t == -100 for t in ex.labels[:ex.prompt_len])


def test_import_cli_and_bad_folders(official_run, tiny_model_dir, tmp_path, capsys):
    assert main(["import-vla0", str(official_run), str(tmp_path / "p")]) == 0
    assert PolicyConfig.load(tmp_path / "p").vision_id
    assert main(["import-vla0", str(official_run), str(tmp_path / "p")]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err

    bare = write_official_run(tmp_path / "bare", tiny_model_dir, processor=False)  # weights only
    assert main(["import-vla0", str(bare), str(tmp_path / "q"), "--processor", str(tiny_model_dir)]) == 0
    assert PolicyConfig.load(tmp_path / "q").training["official"]["processor"] == str(tiny_model_dir)

    broken = write_official_run(tmp_path / "nostats", tiny_model_dir)
    (broken / "dataset_stats.pkl").unlink()
    with pytest.raises(FileNotFoundError, match="missing dataset_stats.pkl"):
        read_run(broken)
    wrong = write_official_run(tmp_path / "dim", tiny_model_dir, dim=7,
                               stats={"out_ori_act": {"min": np.zeros(6), "max": np.ones(6)}})
    with pytest.raises(ValueError, match="6 .min. and 6 .max. values but the model writes 7"):
        read_run(wrong)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_stats_pickle_admits_plain_data_only(tmp_path):
    good = {"out_ori_act": {"min": np.arange(3, dtype=np.float32), "max": torch.ones(3),
                            "count": np.int64(5), "names": ["x", "y", "z"]}}
    (tmp_path / "good.pkl").write_bytes(pickle.dumps(good))
    back = load_plain_pickle(tmp_path / "good.pkl")
    assert back["out_ori_act"]["min"].tolist() == [0, 1, 2] and torch.equal(back["out_ori_act"]["max"], torch.ones(3))
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"out_ori_act": Evil()}))
    with pytest.raises(UnsafePickle, match="builtins.print"):
        load_plain_pickle(tmp_path / "evil.pkl")


def test_released_defaults_without_yaml(tiny_model_dir, tmp_path):
    run = read_run(write_official_run(tmp_path / "r", tiny_model_dir, with_yaml=False))
    assert run.settings == RELEASED and set(run.sources.values()) == {"released default"}


# -- evaluation as the official harness runs it --------------------------------------------------
class _CountingEnv:
    """Stands in for LIBERO's env: counts seeds and resets, the draws that move its RNG."""

    def __init__(self):
        self.calls = []

    def seed(self, s):
        self.calls.append(("seed", s))

    def reset(self):
        self.calls.append("reset")


def _rng_position(calls: list) -> int:
    """Resets since the last seed(7): where the env's RNG is."""
    last = max(i for i, c in enumerate(calls) if c == ("seed", 7))
    return sum(c == "reset" for c in calls[last:])


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [1, 3, 0, 2], [2, 2]])
def test_libero_seeds_once_per_task_whatever_the_trial_order(order):
    from vla0.envs.libero import PROTOCOLS, LiberoEnv
    env = LiberoEnv.__new__(LiberoEnv)
    env.protocol, env._next_trial, env._env = PROTOCOLS["published"], None, _CountingEnv()
    for trial in order:  # as the official harness: seed(7) once, then trial i's reset is reset number i + 1
        env._seed_for(trial, "official")
        env._env.reset()
        assert _rng_position(env._env.calls) == trial + 1
    in_order = LiberoEnv.__new__(LiberoEnv)
    in_order.protocol, in_order._next_trial, in_order._env = PROTOCOLS["published"], None, _CountingEnv()
    for trial in range(4):
        in_order._seed_for(trial, "official")
        in_order._env.reset()
    assert in_order._env.calls.count(("seed", 7)) == 1 and in_order._env.calls.count("reset") == 4
    env._seed_for(5, "perturbed")  # training layouts reseed at every reset
    assert env._env.calls[-1] == ("seed", 7)


def test_eval_device_dtype_and_protocol_defaults(metaworld_policy_dir, tmp_path, capsys):
    from vla0.envs import get_env
    assert get_env("libero").eval_episodes == 50 and get_env("metaworld").eval_episodes == 20
    base = ["eval", "--policy", str(metaworld_policy_dir), "--tasks", "reach-v3", "--episodes", "1",
            "--max-episode-steps", "2", "--videos", "0", "--workers", "1", "--no-progress"]
    assert main([*base, "--device", "cuda", "--out", str(tmp_path / "c")]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert main([*base, "--dtype", "bfloat16", "--device", "cpu", "--out", str(tmp_path / "b")]) == 0
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert (results["device"], results["dtype"]) == ("cpu", "bfloat16")
    assert "protocol" in results
