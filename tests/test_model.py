import json

import numpy as np
import pytest
import torch

from vla0.cli import main as cli
from vla0.config import PolicyConfig
from vla0.model.tiny import build_model
from vla0.model.vlm import check_model_folder, load_vlm
from vla0.prompt import PromptEncoder, collate


def test_init_model_writes_a_standard_hugging_face_folder(tmp_path):
    assert cli(["init-model", "tiny", str(tmp_path / "m")]) == 0
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "preprocessor_config.json", "generation_config.json"} <= names
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    rope = config["text_config"]["rope_parameters"]
    head_dim = config["text_config"]["hidden_size"] // config["text_config"]["num_attention_heads"]
    assert sum(rope["mrope_section"]) == head_dim // 2


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    vlm = load_vlm(tiny_model_dir)
    cfg = PolicyConfig(action_dim=2, cameras=["a"], chunk_size=2, num_bins=100,
                       action_stats={"min": [0, 0], "max": [1, 1]}, image_size=[56, 56])
    enc = PromptEncoder(vlm.tokenizer, vlm.image_processor, cfg)
    frames = [np.random.default_rng(0).integers(0, 255, (56, 56, 3), dtype=np.uint8)]
    batch = collate([enc.prompt(frames, "open the drawer")], vlm.tokenizer.pad_token_id, "left")
    return vlm, batch


def test_saved_folder_reproduces_the_built_models_logits(loaded, tiny_model_dir):
    vlm, batch = loaded
    fresh = build_model("tiny", seed=0)  # init_model(seed=0) built the fixture folder the same way
    with torch.no_grad():
        a = vlm.model(**batch).logits
        b = fresh.model(**batch).logits
    torch.testing.assert_close(a, b)
    assert fresh.tokenizer.get_vocab() == vlm.tokenizer.get_vocab()


def test_mm_token_type_ids_change_positions(loaded):
    """Without mm_token_type_ids Qwen2.5-VL silently uses 1-D positions: our batches must carry them."""
    vlm, batch = loaded
    assert batch["mm_token_type_ids"].sum() > 0
    with torch.no_grad():
        with_ids = vlm.model(**batch).logits
        without = vlm.model(**{k: v for k, v in batch.items() if k != "mm_token_type_ids"}).logits
    assert not torch.allclose(with_ids, without)


def test_missing_model_files_are_named_before_loading(tmp_path, tiny_model_dir):
    import shutil
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        check_model_folder(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="not found"):
        check_model_folder(tmp_path / "nope")
    check_model_folder("Qwen/Qwen2.5-VL-3B-Instruct")  # hub ids pass through to transformers


def test_3b_shape_preset_has_qwen25_vl_3b_dimensions():
    """Built on the meta device: the shape is checked without allocating 7.5 GB."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vla0.model.tiny import model_config
    config, spec = model_config("qwen2.5-vl-3b-shape")
    assert spec["dtype"] == "bfloat16" and config.text_config.vocab_size == 151936
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == 3_754_622_976  # Qwen2.5-VL-3B-Instruct's count
    assert sum(p.numel() for p in model.model.visual.parameters()) == 668_684_288
    assert next(model.parameters()).dtype == torch.bfloat16


def test_lora_scope_language_leaves_the_vision_tower_alone(tiny_model_dir):
    from types import SimpleNamespace

    from vla0.model.vlm import load_vlm
    from vla0.train.model_setup import apply_lora
    names = ["gate_proj", "up_proj", "down_proj", "q_proj"]  # the MLP names also exist in the vision tower
    for scope, vision_expected in (("language", False), ("all", True)):
        cfg = SimpleNamespace(lora_rank=2, lora_alpha=4, lora_targets=names, lora_scope=scope, model="tiny")
        model = apply_lora(load_vlm(tiny_model_dir).model, cfg, None)
        adapted = {n for n, p in model.named_parameters() if p.requires_grad}
        assert any(".language_model.layers." in n and "gate_proj" in n for n in adapted)
        assert any(".visual." in n for n in adapted) == vision_expected, scope
