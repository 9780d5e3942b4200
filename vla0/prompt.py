"""Prompt, labels and masked action augmentation: one observation (+ target chunk) -> token ids.

Layout (Qwen2.5-VL chat format):
  <|im_start|>system\\n{SYSTEM_PROMPT}<|im_end|>\\n
  <|im_start|>user\\n<|vision_start|><|image_pad|>*n<|vision_end|>...{task}<|im_end|>\\n
  <|im_start|>assistant\\n{action text}<|im_end|>
Loss falls only on the action text and its closing <|im_end|>. The multimodal token layout is
built here (not by a transformers processor) so the exact positions of images, masks and labels
are under our control and cached per task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vla0.config import PolicyConfig
from vla0.images import arrange, color_jitter, crop_resize

IGNORE = -100
SYSTEM_PROMPT = (
    "Analyze the input image and predict robot actions for the next {H} timesteps. "
    "Each action has {D} dimensions. Output a single sequence of {N} integers (0-{B} each), "
    "representing the {H} timesteps sequentially. Provide only space separated numbers. Nothing else."
)


def system_prompt(chunk_size: int, action_dim: int, num_bins: int) -> str:
    return SYSTEM_PROMPT.format(H=chunk_size, D=action_dim, N=chunk_size * action_dim, B=num_bins)


@dataclass
class Encoded:
    """One sample, unpadded. labels is None at inference."""
    input_ids: list[int]
    mm_token_type_ids: list[int]
    pixel_values: torch.Tensor  # (patches, patch_dim)
    image_grid_thw: torch.Tensor  # (images, 3)
    labels: list[int] | None = None
    prompt_len: int = 0


class PromptEncoder:
    def __init__(self, tokenizer, image_processor, config: PolicyConfig):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.config = config
        self.image_pad_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        mask_ids = tokenizer.encode(config.mask_char, add_special_tokens=False)
        if len(mask_ids) != 1:
            raise ValueError(f"mask_char {config.mask_char!r} must be a single token, got {mask_ids}")
        self.mask_id = mask_ids[0]
        self.merge = image_processor.merge_size
        self._system = system_prompt(config.chunk_size, config.action_dim, config.num_bins)
        self._templates: dict[tuple[str, int], list[int]] = {}

    # -- images -------------------------------------------------------------------------------
    def images(self, frames: list[np.ndarray], rng: np.random.Generator | None,
               jitter: dict | None = None) -> list[np.ndarray]:
        """Crop (random with rng, else centred) and resize each camera; jitter colours in training."""
        size = tuple(self.config.image_size) if self.config.image_size else None
        images = [crop_resize(f, size, self.config.crop_fraction, rng) for f in frames]
        if jitter and rng is not None:
            images = [color_jitter(im, rng, **jitter) for im in images]
        return arrange(images, self.config.image_layout)

    def pixels(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.image_processor(images=images, return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"]

    # -- tokens -------------------------------------------------------------------------------
    def _template(self, task: str, num_images: int) -> list[int]:
        key = (task, num_images)
        if key not in self._templates:
            messages = [
                {"role": "system", "content": self._system},
                {"role": "user", "content": [{"type": "image"}] * num_images + [{"type": "text", "text": task}]},
            ]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            self._templates[key] = self.tokenizer.encode(text, add_special_tokens=False)
        return self._templates[key]

    def prompt(self, frames: list[np.ndarray], task: str, rng: np.random.Generator | None = None,
               jitter: dict | None = None) -> Encoded:
        pixel_values, grid = self.pixels(self.images(frames, rng, jitter))
        counts = iter((grid.prod(-1) // self.merge**2).tolist())
        ids: list[int] = []
        for t in self._template(task, len(grid)):
            ids.extend([t] * next(counts) if t == self.image_pad_id else [t])
        types = [1 if t == self.image_pad_id else 0 for t in ids]
        return Encoded(ids, types, pixel_values, grid, prompt_len=len(ids))

    def action_ids(self, action_text: str) -> list[int]:
        return self.tokenizer.encode(action_text, add_special_tokens=False)

    def training_example(self, frames: list[np.ndarray], task: str, action_text: str,
                         rng: np.random.Generator, mask_max_frac: float = 0.4, p_no_mask: float = 0.1,
                         jitter: dict | None = None) -> Encoded:
        ex = self.prompt(frames, task, rng, jitter)
        target = self.action_ids(action_text)
        inputs, labels = list(target), list(target)
        # Masked action augmentation: hide some action characters so the model must read the
        # image rather than continue the number pattern; hidden characters carry no loss.
        if rng.random() >= p_no_mask and target:
            count = int(rng.uniform(0.0, mask_max_frac) * len(target))
            for i in rng.choice(len(target), size=count, replace=False):
                inputs[i], labels[i] = self.mask_id, IGNORE
        ex.input_ids = ex.input_ids + inputs + [self.end_id]
        ex.mm_token_type_ids = ex.mm_token_type_ids + [0] * (len(inputs) + 1)
        ex.labels = [IGNORE] * ex.prompt_len + labels + [self.end_id]
        return ex


def collate(examples: list[Encoded], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad to a batch: right padding for training, left padding for generation."""
    length = max(len(e.input_ids) for e in examples)

    def pad(seq: list[int], value: int) -> list[int]:
        fill = [value] * (length - len(seq))
        return seq + fill if padding_side == "right" else fill + seq

    batch = {
        "input_ids": torch.tensor([pad(e.input_ids, pad_id) for e in examples]),
        "attention_mask": torch.tensor([pad([1] * len(e.input_ids), 0) for e in examples]),
        "mm_token_type_ids": torch.tensor([pad(e.mm_token_type_ids, 0) for e in examples]),
        "pixel_values": torch.cat([e.pixel_values for e in examples]),
        "image_grid_thw": torch.cat([e.image_grid_thw for e in examples]),
    }
    if examples[0].labels is not None:
        batch["labels"] = torch.tensor([pad(e.labels, IGNORE) for e in examples])
    return batch
