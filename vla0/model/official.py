"""VLA-0's released run folders (github NVlabs/vla0) read safely, and turned into vla0 policies.

What an official run folder holds (rv_train/train.py, save_checkpoint):
  model_last/          the Qwen2.5-VL weights (`save_pretrained`; the processor too when the run
                       saved it, else it comes from the base model, Qwen/Qwen2.5-VL-3B-Instruct)
  model_last.pth       torch.save({"cfg", "epoch", "model_state": None, "optimizer_state",
                       "lr_sched_state"}): only metadata for us (the weights are in model_last/)
  dataset_stats.pkl    a pickle of the dataset's statistics; the model reads
                       stats["out_ori_act"]["min" / "max"] (per action dimension)
  config.yaml          the run's merged yacs config (written at the start of every run)

Pickles are code, so neither file is unpickled freely: the .pth goes through
`torch.load(weights_only=True)` and dataset_stats.pkl through an unpickler that admits only
plain containers, numbers, strings, numpy arrays and torch tensors (rebuilt by torch's own
weights-only loader); any other type is refused with its name (`trust_pickle` opts out).

The imported policy reproduces the official prompt and decoding: the same system prompt
(H, D, B), "Picture 1: " before the image (add_vision_id), two cameras each centre-cropped 0.875,
resized to 224x224 and tiled, per-dimension min/max to integers 0..B, and the released
ensembling (8 chunks, newest 1.0, older 0.5, a new chunk every step). Cameras are named as
vla0's LIBERO env names them: "image" (agentview), "image2" (wrist).
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vla0.config import PolicyConfig
from vla0.io import save_folder_atomic

WEIGHTS_DIR, CHECKPOINT, STATS, CONFIG = "model_last", "model_last.pth", "dataset_stats.pkl", "config.yaml"
BASE_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
PROCESSOR_FILES = ("tokenizer_config.json", "preprocessor_config.json")
# The released LIBERO run's settings, for a folder without config.yaml: NVlabs/vla0 configs/vla0.yaml
# over rv_train/configs.py's defaults (line numbers of that repository at commit 731bef2).
RELEASED = {
    "horizon": 8,  # rv_train/configs.py:74 (MODEL.QWEN.horizon)
    "original_action_dim": 7,  # configs/vla0.yaml:31
    "num_bins_actions": 1000,  # rv_train/configs.py:86
    "add_vision_id": True,  # configs/vla0.yaml:26
    "num_cam": 2,  # configs/vla0.yaml:33
    "tiled_rgb_imgs": True,  # configs/vla0.yaml:34
    "rgb_img_size": [224, 224],  # configs/vla0.yaml:30
    "crop_img": 0.875,  # configs/vla0.yaml:22 (DATALOADER.ROBOVERSE.cfg_opts IMAGE.crop_img:0.875)
    "qwen_model_id": BASE_MODEL,  # rv_train/configs.py:76
}
LIBERO_CAMERAS = ["image", "image2"]  # agentview, then wrist: the official cam_list ('3p1', '3p2')
LIBERO_RENDER = [256, 256]  # the official eval renders LIBERO at 256 px


# -- safe unpickling ----------------------------------------------------------------------------
class UnsafePickle(pickle.UnpicklingError):
    pass


def _tensor_from_bytes(data: bytes) -> torch.Tensor:
    """torch pickles a tensor's storage as torch.save bytes: read them back weights-only."""
    return torch.load(io.BytesIO(data), weights_only=True)


_ALLOWED = {
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("torch._utils", "_rebuild_tensor_v2"),
}


class _PlainUnpickler(pickle.Unpickler):
    """Admits plain containers, numbers, strings, numpy arrays (and dtypes, scalars) and torch
    tensors; refuses every other global, naming it."""

    def __init__(self, file, where: str):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str):
        if module.startswith("numpy") and name.endswith("DType"):  # numpy 2's dtype classes, e.g. Float32DType
            return super().find_class(module, name)
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _tensor_from_bytes
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickle(f"{self.where} holds a {module}.{name}, which is not a plain container, number, "
                           "numpy array or tensor; refusing to unpickle it (--trust-pickle loads it anyway, "
                           "running whatever code it names)")


def load_plain_pickle(path: Path, trust: bool = False):
    with open(path, "rb") as f:
        return pickle.load(f) if trust else _PlainUnpickler(f, str(path)).load()


# -- reading a run ------------------------------------------------------------------------------
@dataclass
class OfficialRun:
    folder: Path
    settings: dict  # RELEASED's keys, from config.yaml where it has them
    sources: dict  # each setting: "config.yaml" or "released default"
    action_min: list[float]
    action_max: list[float]
    epoch: int | None
    processor_in_weights: bool


def _yaml_settings(path: Path) -> dict:
    import yaml
    raw = yaml.safe_load(path.read_text()) or {}
    qwen = (raw.get("MODEL") or {}).get("QWEN") or {}
    found = {k: qwen[k] for k in RELEASED if k in qwen}
    if isinstance(found.get("rgb_img_size"), str):  # yacs writes tuples given on the command line as "224,224"
        found["rgb_img_size"] = [int(x) for x in found["rgb_img_size"].split(",")]
    opts = str(((raw.get("DATALOADER") or {}).get("ROBOVERSE") or {}).get("cfg_opts", ""))
    parts = opts.split(":")
    for key, value in zip(parts[::2], parts[1::2]):
        if key == "IMAGE.crop_img":
            found["crop_img"] = float(value)
    return found


def read_run(folder: str | os.PathLike, trust_pickle: bool = False) -> OfficialRun:
    """Check and read an official run folder, without loading the model: every problem is reported
    before any weights are touched."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"official run folder not found: {folder}")
    weights = folder / WEIGHTS_DIR
    missing = [n for n in (WEIGHTS_DIR, CHECKPOINT, STATS) if not (folder / n).exists()]
    if not missing:
        missing = [f"{WEIGHTS_DIR}/{n}" for n in ("config.json",) if not (weights / n).exists()]
        if not any(weights.glob("*.safetensors")) and not any(weights.glob("*.bin")):
            missing.append(f"{WEIGHTS_DIR}/model.safetensors (or shards)")
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete VLA-0 run folder: missing {', '.join(missing)}")
    settings, sources = dict(RELEASED), {k: "released default" for k in RELEASED}
    if (folder / CONFIG).exists():
        found = _yaml_settings(folder / CONFIG)
        settings.update(found)
        sources.update({k: CONFIG for k in found})
    checkpoint = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(checkpoint, dict) or "epoch" not in checkpoint:
        raise ValueError(f"{folder / CHECKPOINT}: expected the dict rv_train/train.py saves (cfg, epoch, ...), "
                         f"got {type(checkpoint).__name__}")
    stats = load_plain_pickle(folder / STATS, trust_pickle)
    try:
        act = stats["out_ori_act"]
        low = np.asarray(act["min"], np.float64).reshape(-1).tolist()
        high = np.asarray(act["max"], np.float64).reshape(-1).tolist()
    except (KeyError, TypeError) as e:
        raise ValueError(f"{folder / STATS}: expected {{'out_ori_act': {{'min': [...], 'max': [...]}}}}, "
                         f"missing {e}") from None
    dim = int(settings["original_action_dim"])
    if len(low) != dim or len(high) != dim:
        raise ValueError(f"{folder / STATS}: action statistics have {len(low)} (min) and {len(high)} (max) values "
                         f"but the model writes {dim} action dimensions ({sources['original_action_dim']})")
    if int(settings["num_cam"]) != len(LIBERO_CAMERAS) or not settings["tiled_rgb_imgs"]:
        raise ValueError(f"{folder}: num_cam {settings['num_cam']}, tiled {settings['tiled_rgb_imgs']}: only the "
                         "released layout (2 cameras tiled: LIBERO's agentview and wrist) is imported")
    return OfficialRun(folder, settings, sources, low, high, checkpoint.get("epoch"),
                       all((weights / n).exists() for n in PROCESSOR_FILES))


def policy_config(run: OfficialRun, processor: str) -> PolicyConfig:
    s = run.settings
    return PolicyConfig(
        action_dim=int(s["original_action_dim"]), cameras=list(LIBERO_CAMERAS),
        action_stats={"min": run.action_min, "max": run.action_max}, chunk_size=int(s["horizon"]),
        num_bins=int(s["num_bins_actions"]), normalization="minmax", action_format="text", image_layout="tile",
        image_size=[int(x) for x in s["rgb_img_size"]], crop_fraction=float(s["crop_img"]),
        mask_char="?",  # the official masking writes token 30, Qwen's "?" (rv_train/models/qwen/model.py:732)
        vision_id=bool(s["add_vision_id"]), camera_shapes={c: list(LIBERO_RENDER) for c in LIBERO_CAMERAS},
        n_action_steps=1, ensemble=8, ensemble_weights="vla0", base_model=str(s["qwen_model_id"]),
        dataset="physical-intelligence/libero",
        training={"official": {"run": str(run.folder.resolve()), "epoch": run.epoch, "processor": processor,
                               "settings": s, "sources": run.sources}})


def _link_or_copy(src: Path, dst: Path) -> None:
    """Weights are gigabytes: a hard link when the folders share a file system, else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def import_run(run_dir: str | os.PathLike, out: str | os.PathLike, processor: str | None = None,
               trust_pickle: bool = False) -> Path:
    """An official run folder -> a vla0 policy folder (vla0 eval / serve, VLA0Policy.from_pretrained)."""
    from vla0.model.vlm import load_processor
    run = read_run(run_dir, trust_pickle)
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose another output folder")
    weights = run.folder / WEIGHTS_DIR
    source = processor or (str(weights) if run.processor_in_weights else str(run.settings["qwen_model_id"]))
    config = policy_config(run, source)
    tokenizer, image_processor = load_processor(source)  # fails here, naming the source, before any copy

    def write(tmp: Path) -> None:
        for f in sorted(weights.iterdir()):
            if f.is_file() and (f.suffix in (".safetensors", ".bin") or f.name.endswith(".index.json")
                                or f.name in ("config.json", "generation_config.json")):
                _link_or_copy(f, tmp / f.name)
        tokenizer.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)
        config.save(tmp)

    save_folder_atomic(out, write)
    return out
