import numpy as np
import pytest

from vla0.config import PolicyConfig
from vla0.model.vlm import load_processor
from vla0.prompt import IGNORE, PromptEncoder, collate, system_prompt


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    tok, ip = load_processor(tiny_model_dir)
    cfg = PolicyConfig(action_dim=2, cameras=["a", "b"], chunk_size=2, num_bins=100,
                       action_stats={"min": [0, 0], "max": [1, 1]}, image_size=[56, 56])
    return PromptEncoder(tok, ip, cfg)


def frames():
    return [np.full((64, 64, 3), 100, np.uint8), np.full((64, 64, 3), 200, np.uint8)]


def test_system_prompt_is_the_papers_text():
    assert system_prompt(8, 7, 1000) == (
        "Analyze the input image and predict robot actions for the next 8 timesteps. Each action has 7 "
        "dimensions. Output a single sequence of 56 integers (0-1000 each), representing the 8 timesteps "
        "sequentially. Provide only space separated numbers. Nothing else.")


def test_system_prompt_costs_about_as_few_tokens_as_with_qwens_tokenizer(encoder):
    n = len(encoder.tokenizer.encode(system_prompt(8, 7, 1000), add_special_tokens=False))
    assert n <= 70, n  # ~250 with one token per character


def test_digits_and_space_are_single_tokens(encoder):
    toks = encoder.tokenizer.convert_ids_to_tokens(encoder.tokenizer.encode("512 3 999", add_special_tokens=False))
    assert toks == ["5", "1", "2", "Ġ", "3", "Ġ", "9", "9", "9"]


def test_tiled_prompt_layout_and_image_token_count(encoder):
    ex = encoder.prompt(frames(), "push the puck")
    # two 56x56 cameras tiled -> one 56x112 image -> (56/28)*(112/28) = 8 merged tokens
    assert ex.image_grid_thw.tolist() == [[1, 4, 8]]
    assert sum(ex.mm_token_type_ids) == 8
    text = encoder.tokenizer.decode(ex.input_ids)
    assert text.startswith("<|im_start|>system\nAnalyze the input image")
    assert text.endswith("<|vision_end|>push the puck<|im_end|>\n<|im_start|>assistant\n")


def test_separate_layout_gives_one_image_per_camera(encoder):
    encoder.config.image_layout = "separate"
    try:
        ex = encoder.prompt(frames(), "t")
    finally:
        encoder.config.image_layout = "tile"
    assert ex.image_grid_thw.tolist() == [[1, 4, 4], [1, 4, 4]]
    assert encoder.tokenizer.decode(ex.input_ids).count("<|vision_start|>") == 2


def test_labels_cover_only_action_tokens_and_end_of_turn(encoder):
    rng = np.random.default_rng(0)
    ex = encoder.training_example(frames(), "t", "12 7 100 0", rng, mask_max_frac=0.0)
    n_action = len("12 7 100 0")
    supervised = [i for i, l in enumerate(ex.labels) if l != IGNORE]
    assert supervised == list(range(ex.prompt_len, ex.prompt_len + n_action + 1))
    assert ex.labels[-1] == encoder.end_id
    assert encoder.tokenizer.decode(ex.input_ids[ex.prompt_len:]) == "12 7 100 0<|im_end|>"


def test_masked_positions_are_replaced_in_input_and_ignored_in_loss(encoder):
    action = "11 22 33 44 55 66 77 88"
    counts = []
    for seed in range(200):
        ex = encoder.training_example(frames(), "t", action, np.random.default_rng(seed), mask_max_frac=0.4)
        target = encoder.action_ids(action)
        body_in = ex.input_ids[ex.prompt_len:-1]
        body_lab = ex.labels[ex.prompt_len:-1]
        masked = [i for i, t in enumerate(body_in) if t == encoder.mask_id]
        # exactly the masked positions lose their label; the others keep the true token
        assert [i for i, l in enumerate(body_lab) if l == IGNORE] == masked
        assert all(body_in[i] == target[i] == body_lab[i] for i in range(len(target)) if i not in masked)
        assert ex.labels[-1] == encoder.end_id and ex.input_ids[-1] == encoder.end_id
        counts.append(len(masked))
    frac = np.array(counts) / len(encoder.action_ids(action))
    assert frac.max() <= 0.4
    assert 0.05 <= np.mean(frac == 0) <= 0.35  # 10% unmasked by rule, plus small draws rounding to 0
    assert 0.12 <= frac.mean() <= 0.24  # E[frac] = 0.9 * 0.2 (minus rounding down)


def test_collate_pads_right_for_training_and_left_for_generation(encoder):
    rng = np.random.default_rng(0)
    a = encoder.training_example(frames(), "short", "1 2 3 4", rng, 0.0)
    b = encoder.training_example(frames(), "a much longer task text", "1 2 3 4", rng, 0.0)
    right = collate([a, b], pad_id=0, padding_side="right")
    assert right["labels"][0, len(a.input_ids):].eq(IGNORE).all()
    assert right["attention_mask"][0].tolist() == [1] * len(a.input_ids) + [0] * (len(b.input_ids) - len(a.input_ids))
    left = collate([encoder.prompt(frames(), "x"), encoder.prompt(frames(), "yyy yyy")], pad_id=0, padding_side="left")
    assert left["attention_mask"][:, -1].eq(1).all() and left["attention_mask"][0, 0] == 0
    assert left["pixel_values"].shape[0] == 2 * 32
