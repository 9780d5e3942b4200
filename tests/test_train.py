import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from synthetic import TASKS, write_synthetic_dataset
from vla0.cli import main as cli
from vla0.data.lerobot_dataset import load_lerobot
from vla0.policy.policy import VLA0Policy
from vla0.train.trainer import TrainConfig, Trainer, train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic")


def config(model, dataset, out, **kw):
    base = dict(model=str(model), dataset=str(dataset), out=str(out), chunk_size=2, num_bins=100, lr=3e-3,
                batch_size=6, steps=20, crop_fraction=1.0, mask_max_frac=0.0, ensemble=1, progress=False,
                save_every=10)
    base.update(kw)
    return TrainConfig(**base)


def test_overfit_then_reproduce_dataset_chunks(tiny_model_dir, dataset, tmp_path):
    policy_dir = train(config(tiny_model_dir, dataset, tmp_path / "run", steps=250))
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 250 and log[-1]["loss"] < 0.25 * log[0]["loss"]
    policy = VLA0Policy.from_pretrained(tmp_path / "run")  # a run folder resolves to its policy
    data = load_lerobot(dataset)
    obs = {"observation.images.front": data.images["observation.images.front"],
           "task": [data.tasks[i] for i in data.task_index]}
    predicted = policy.predict_action_chunk(obs)
    target = np.stack([data.action[[i, min(i + 1, ep.end - 1)]] for ep in data.episodes for i in range(ep.start, ep.end)])
    bin_width = (data.stats["action"]["max"] - data.stats["action"]["min"]) / 100
    errors = np.abs(predicted - target) / np.maximum(bin_width, 1e-9)
    assert np.median(errors) <= 1.0 and np.mean(errors <= 3) >= 0.9, errors.max(axis=(1, 2))
    assert (policy_dir / "vla0_policy.json").exists()


def test_resume_continues_exactly_where_a_run_stopped(tiny_model_dir, dataset, tmp_path):
    straight = Trainer(config(tiny_model_dir, dataset, tmp_path / "a"))
    straight.train()
    first = Trainer(config(tiny_model_dir, dataset, tmp_path / "b", steps=10))
    first.train()  # stands for a run killed after its step-10 checkpoint, at step 13:
    log = tmp_path / "b" / "train_log.jsonl"
    log.write_text(log.read_text() + "".join(f'{{"step": {s}, "loss": 1.0}}\n' for s in (11, 12, 13))
                   + '{"step": 14, "lo')  # steps the checkpoint did not keep, and a row cut off by the kill
    resumed = Trainer(config(tiny_model_dir, dataset, tmp_path / "b", resume=True))
    assert resumed.step == 10
    resumed.train()
    a = load_file(tmp_path / "a" / "policy" / "model.safetensors")
    b = load_file(tmp_path / "b" / "policy" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))  # steps 11-13 logged once, by the resumed run
    ckpts = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert ckpts == ["latest", "step-0000010", "step-0000020"]
    assert not list((tmp_path / "b" / "checkpoints").glob(".tmp*"))


def test_lora_run_saves_an_adapter_that_loads_as_a_policy(tiny_model_dir, dataset, tmp_path):
    policy_dir = train(config(tiny_model_dir, dataset, tmp_path / "lora", steps=3, lora_rank=4))
    assert (policy_dir / "adapter_config.json").exists() and not (policy_dir / "model.safetensors").exists()
    policy = VLA0Policy.from_pretrained(policy_dir)
    obs = {"observation.images.front": np.zeros((1, 32, 32, 3), np.uint8), "task": [TASKS[0]]}
    assert policy.predict_action_chunk(obs).shape == (1, 2, 4)
    assert cli(["predict", "--policy", str(policy_dir), "--dataset", str(dataset), "--frame", "3"]) == 0


@pytest.mark.parametrize("change,message", [
    (dict(cameras=["wrist"]), r"camera\(s\) \['wrist'\] not in dataset"),
    (dict(steps=None), "exactly one of --epochs or --steps"),
    (dict(dataset="/nonexistent/ds"), "/nonexistent/ds"),
    (dict(model="/nonexistent/model"), "model folder not found"),
    (dict(resume=True), "no complete checkpoint"),
])
def test_bad_arguments_fail_before_loading_anything(tiny_model_dir, dataset, tmp_path, change, message):
    args = dict(model=tiny_model_dir, dataset=dataset, out=tmp_path / "bad")
    args.update({k: change.pop(k) for k in list(change) if k in args})
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        Trainer(config(**args, **change))


def test_cli_reports_a_user_error_in_one_line(dataset, tmp_path, capsys):
    code = cli(["train", "--model", str(tmp_path / "missing"), "--dataset", str(dataset),
                "--out", str(tmp_path / "r"), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "model folder not found" in err


def test_two_process_run_ends_with_identical_parameters(tiny_model_dir, dataset, tmp_path):
    script = tmp_path / "rank_params.py"
    script.write_text(
        "import sys, torch\n"
        "from vla0.train.trainer import TrainConfig, Trainer\n"
        f"cfg = TrainConfig(model={str(tiny_model_dir)!r}, dataset={str(dataset)!r}, out={str(tmp_path / 'ddp')!r},"
        " chunk_size=2, num_bins=100, lr=1e-3, batch_size=3, steps=4, progress=False, save_every=100)\n"
        "t = Trainer(cfg); t.train()\n"
        "flat = torch.cat([p.detach().flatten() for p in t.acc.unwrap_model(t.model).parameters()])\n"
        "torch.save(flat, sys.argv[1] + f'/params-{t.acc.process_index}-of-{t.acc.num_processes}.pt')\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent.parent))
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(script), str(tmp_path)], check=True, env=env, timeout=300)
    p0 = torch.load(tmp_path / "params-0-of-2.pt")
    p1 = torch.load(tmp_path / "params-1-of-2.pt")
    assert torch.equal(p0, p1)
    start = torch.cat([p.flatten() for p in load_file(tiny_model_dir / "model.safetensors").values()])
    assert p0.numel() == start.numel() and not torch.equal(p0.sort().values, start.sort().values)


def test_bf16_autocast_and_cosine_schedule_run(tiny_model_dir, dataset, tmp_path):
    trainer = Trainer(config(tiny_model_dir, dataset, tmp_path / "bf16", steps=4, precision="bf16",
                             schedule="cosine", warmup_steps=2))
    trainer.train()
    log = [json.loads(line) for line in (tmp_path / "bf16" / "train_log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in log)
    assert [round(r["lr"] / 3e-3, 3) for r in log] == [0.5, 1.0, 0.5, 0.0]  # warm-up, then cosine to 0


def test_full_size_options_checkpointing_bf16_weights_8bit_adam(tiny_model_dir, dataset, tmp_path):
    """The options the 3B shape needs, on the tiny model: LoRA on bf16 weights with activation
    checkpointing (and bitsandbytes' 8-bit AdamW when it is installed), frames from the cache."""
    import importlib.util
    optimizer = "adamw8bit" if importlib.util.find_spec("bitsandbytes") else "adamw"
    trainer = Trainer(config(tiny_model_dir, dataset, tmp_path / "big", steps=3, lora_rank=4, model_dtype="bf16",
                             gradient_checkpointing=True, optimizer=optimizer, precision="bf16", workers=0,
                             frame_cache=str(tmp_path / "frames"), lora_targets=["q_proj", "gate_proj"]))
    base = trainer.acc.unwrap_model(trainer.model).get_base_model()
    assert base.model.language_model.gradient_checkpointing and base.dtype == torch.bfloat16
    assert type(trainer.optimizer.optimizer).__name__ == ("AdamW8bit" if optimizer == "adamw8bit" else "AdamW")
    assert not any(".visual." in n for n, p in trainer.model.named_parameters() if p.requires_grad)
    trainer.train()
    log = [json.loads(line) for line in (tmp_path / "big" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(np.isfinite(r["loss"]) for r in log)
    assert list((tmp_path / "frames").glob("observation.images.front-*.u8"))


def test_options_that_need_a_missing_package_fail_first(tiny_model_dir, dataset, tmp_path, monkeypatch):
    from vla0.train import model_setup
    monkeypatch.setattr(model_setup, "installed", lambda module: False)
    assert model_setup.trackers("auto") == []
    for change, package in ((dict(optimizer="adamw8bit"), "bitsandbytes"), (dict(log_with="tensorboard"), "tensorboard"),
                            (dict(attn_implementation="flash_attention_2"), "flash_attn")):
        with pytest.raises(ValueError, match=f"needs the {package} package"):
            Trainer(config(tiny_model_dir, dataset, tmp_path / "x", **change))
