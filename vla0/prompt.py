"""Prompt, labels and masked action augmentation: one observation (+ target chunk) -> token ids.

Layout (Qwen2.5-VL chat format):
  <|im_start|>system\\n{SYSTEM_PROMPT}<|im_end|>\\n
  <|im_start|>user\\n[Picture 1: ]<|vision_start|><|image_pad|>*n<|vision_end|>...{task}<|im_end|>\\n
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
from vla0.images import apply_jitter, arrange, crop_resize, jitter_draw

IGNORE = -100
SYSTEM_PROMPT = (
    "Analyze the input image and predict robot actions for the next {H} timesteps. "
    "Each action has {D} dimensions. Output a single sequence of {N} integers (0-{B} each), "
    "representing the {H} timesteps sequentially. Provide only space separated numbers. Nothing else."
)


# The bins action format (vla0.bins) writes one action token per dimension instead.
BINS_SYSTEM_PROMPT = (
    "Analyze the input image and predict robot actions for the next {H} timesteps. "
    "Each action has {D} dimensions. Output a single sequence of {N} action tokens, one per dimension, "
    "representing the {H} timesteps sequentially. Nothing else."
)
# The words VLA prompts are made of: the embedded tokenizer's merges are learned from this text
# (vla0.model.tokenizer), and the bins action format keeps its tokens out of the action block
# (vla0.bins). Changing it changes both: leave it as it is.
PROMPT_CORPUS = """
Analyze the input image and predict robot actions for the next timesteps. Each action has
dimensions. Output a single sequence of integers each, representing the timesteps sequentially.
Provide only space separated numbers. Nothing else. You are a helpful assistant.
system user assistant system user assistant
reach the goal position. push the puck to the goal. pick up the puck and place it at the goal.
open the drawer. close the drawer. press the button from the top. press the button. open the door.
close the door. turn the faucet. put the object in the basket. pick up the block and stack it on
the other block. move the arm to the left, right, forward, backward, up and down. grasp the handle
of the window and slide it open. put the bowl on the plate. put the cream cheese in the bowl.
turn on the stove. put the mug in the microwave and close it. put both the alphabet soup and the
tomato sauce in the basket. pick up the black bowl on the wooden cabinet and place it on the plate.
open the top drawer of the cabinet. the robot gripper camera view of the table with a red object.
""".strip()


def system_prompt(chunk_size: int, action_dim: int, num_bins: int, action_format: str = "text") -> str:
    template = BINS_SYSTEM_PROMPT if action_format == "bins" else SYSTEM_PROMPT
    return template.format(H=chunk_size, D=action_dim, N=chunk_size * action_dim, B=num_bins)


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
        self._system = system_prompt(config.chunk_size, config.action_dim, config.num_bins, config.action_format)
        self._templates: dict[tuple[str, int], list[int]] = {}
        self.reserved: set[int] = set()  # token ids no prompt may contain (the bins format's action block)

    # -- images -------------------------------------------------------------------------------
    def images(self, frames: list[np.ndarray], rng: np.random.Generator | None,
               jitter: dict | None = None) -> list[np.ndarray]:
        """Crop (random with rng, else centred) and resize each camera; jitter colours in training,
        one draw per sample for all its cameras (as VLA-0's ColorJitter over the stacked cameras)."""
        size = tuple(self.config.image_size) if self.config.image_size else None
        images = [crop_resize(f, size, self.config.crop_fraction, rng) for f in frames]
        if jitter and rng is not None:
            draw = jitter_draw(rng, **jitter)
            images = [apply_jitter(im, draw) for im in images]
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
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      add_vision_id=self.config.vision_id)
            if self.config.vision_id and "Picture 1: " not in text:  # a template without Qwen's add_vision_id
                raise ValueError("the policy asks for vision ids ('Picture 1: ' before each image) but the "
                                 "tokenizer's chat template ignores add_vision_id; use Qwen2.5-VL's processor")
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            self._check_reserved(task, ids)
            self._templates[key] = ids
        return self._templates[key]

    def check_task(self, task: str) -> None:
        """Refuse an instruction written with a reserved token (before any expensive work)."""
        self._check_reserved(task, self.tokenizer.encode(task, add_special_tokens=False))

    def _check_reserved(self, task: str, ids: list[int]) -> None:
        clash = sorted({self.tokenizer.convert_ids_to_tokens(t) for t in ids if t in self.reserved})
        if clash:
            raise ValueError(f"task {task!r} is written with token(s) {clash} that the bins action format "
                             "uses as action bins; rephrase the instruction or use --action-format text")

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

    def training_example(self, frames: list[np.ndarray], task: str, target: str | list[int],
                         rng: np.random.Generator, mask_max_frac: float = 0.4, p_no_mask: float = 0.1,
                         jitter: dict | None = None) -> Encoded:
        """target: the action text, or its token ids (the bins format's: one token per number)."""
        ex = self.prompt(frames, task, rng, jitter)
        if isinstance(target, str):
            target = self.action_ids(target)
        inputs, labels = list(target), list(target)
        # Masked action augmentation: hide some action tokens (characters of the text, whole
        # bins) so the model must read the image rather than continue the number pattern;
        # hidden tokens carry no loss.
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
