"""Colour jitter (VLA-0's augmentation, without torchvision) and the vla0-libero recipe."""
import numpy as np
import pytest

from vla0.images import color_jitter
from vla0.train.recipes import recipe


def image():
    yy, xx = np.mgrid[:20, :30]
    return np.stack([xx * 8, yy * 12, np.full_like(xx, 100)], -1).astype(np.uint8)


def test_color_jitter_is_seeded_bounded_and_off_at_zero():
    img = image()
    assert color_jitter(img, np.random.default_rng(0)) is img
    a = color_jitter(img, np.random.default_rng(1), 0.2, 0.2, 0.2, 0.05)
    b = color_jitter(img, np.random.default_rng(1), 0.2, 0.2, 0.2, 0.05)
    c = color_jitter(img, np.random.default_rng(2), 0.2, 0.2, 0.2, 0.05)
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    bright = [color_jitter(img, np.random.default_rng(s), brightness=0.2).mean() / img.mean() for s in range(20)]
    assert 0.78 < min(bright) < 1.0 < max(bright) < 1.22  # factors within [0.8, 1.2], both ways
    grey = np.full((4, 4, 3), 90, np.uint8)  # no saturation: hue and saturation leave grey alone
    assert np.abs(color_jitter(grey, np.random.default_rng(3), saturation=0.2, hue=0.05).astype(int) - 90).max() <= 1
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200
    shifted = color_jitter(red, np.random.default_rng(4), hue=0.05)
    assert shifted[..., 0].min() > 150 and shifted[..., 1:].max() > 0  # hue turned, colour stayed reddish
    with pytest.raises(ValueError, match="hue jitter must be in"):
        color_jitter(img, np.random.default_rng(0), hue=0.7)


def test_vla0_libero_recipe_is_the_published_setup_and_overridable():
    from vla0.cli import build_parser
    from vla0.cli.train import train_config
    args = build_parser().parse_args(["train", "--recipe", "vla0-libero", "--model", "m", "--dataset", "d",
                                      "--out", "o", "--steps", "10", "--lr", "1e-5"])
    cfg = train_config(args)
    assert (cfg.steps, cfg.epochs) == (10, None)  # --steps replaces the recipe's 24 epochs
    # the released numerics: bf16 weights and AdamW state, no clipping, lr per GPU, batch 8, 24 epochs
    assert (cfg.model_dtype, cfg.max_grad_norm, cfg.scale_lr_with_gpus, cfg.batch_size) == ("bf16", 0.0, True, 8)
    assert (cfg.weight_decay, cfg.vision_id, cfg.mask_char, recipe("vla0-libero")["epochs"]) == (1e-10, True, "?", 24)
    assert (cfg.chunk_size, cfg.num_bins, cfg.image_size, cfg.crop_fraction) == (8, 1000, [224, 224], 0.875)
    assert (cfg.mask_max_frac, cfg.mask_p_none, cfg.color_jitter) == (0.4, 0.1, (0.2, 0.2, 0.2, 0.05))
    assert (cfg.precision, cfg.normalization, cfg.image_layout, cfg.ensemble_weights) == ("bf16", "minmax", "tile",
                                                                                         "vla0")
    assert cfg.lr == 1e-5  # a flag overrides the recipe
    from pathlib import Path

    from vla0.train import recipes
    assert "configs/vla0.yaml:10" in Path(recipes.__file__).read_text()  # each value's provenance is written down
    with pytest.raises(ValueError, match="unknown recipe 'vla0-droid'; recipes: quickstart, rl-weak, vla0-libero"):
        recipe("vla0-droid")


def test_one_jitter_draw_per_sample_for_all_cameras(tiny_model_dir):
    """VLA-0 jitters the stacked cameras with one ColorJitter call: the same factors for both."""
    from vla0.config import PolicyConfig
    from vla0.model.vlm import load_processor
    from vla0.prompt import PromptEncoder
    config = PolicyConfig(action_dim=2, cameras=["a", "b"], action_stats={"min": [0, 0], "max": [1, 1]},
                          crop_fraction=1.0, image_layout="separate")
    encoder = PromptEncoder(*load_processor(tiny_model_dir), config)
    jitter = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05}
    for seed in range(3):
        a, b = encoder.images([image(), image()], np.random.default_rng(seed), jitter)
        assert np.array_equal(a, b) and not np.array_equal(a, image())
