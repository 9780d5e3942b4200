"""ActionProcessor: everything between an observation and the model, and between the model's
tokens and an action, built once from a policy's config, tokenizer and image processor.

    pre:  observation dict (LeRobot keys) -> checked frames + task -> prompt tokens and pixels
          (crop, resize, tile: vla0.images; chat layout, masking: vla0.prompt)
          training sample (frames, task, (H, D) actions) -> tokens with masked action text + labels
    model: the action grammar (vla0.grammar) every decoder constrains the model with
    post: generated tokens -> (H, D) actions, clipped to the action bounds

The action format (PolicyConfig.action_format) picks the codec and the grammar, and nothing else:
    text  (VLA-0, the default): "H*D integers in 0..B" as digits and spaces (vla0.codec, ActionGrammar)
    bins  (OpenVLA): one token of a reserved block per number, 256 bins over q01..q99
          (vla0.bins, BinGrammar)

The policy, the trainer, the RL learner and the server all take one of these instead of
rebuilding the pieces from a PolicyConfig.
"""

from __future__ import annotations

import numpy as np

from vla0.bins import BinCodec, action_token_block
from vla0.codec import ActionCodec, DecodedChunk
from vla0.config import IMAGE_PREFIX, PolicyConfig
from vla0.grammar import ActionGrammar, BinGrammar
from vla0.images import check_image
from vla0.prompt import Encoded, PromptEncoder


class ActionProcessor:
    def __init__(self, config: PolicyConfig, tokenizer, image_processor):
        self.config = config
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.encoder = PromptEncoder(tokenizer, image_processor, config)
        self.action_format = config.action_format
        if self.action_format == "bins":
            block = action_token_block(tokenizer, config.num_bins, config.mask_char)
            self.codec = BinCodec.from_stats(config.action_stats, config.chunk_size, block)
            self.grammar = BinGrammar(block, self.codec.num_values, self.encoder.end_id)
            self.encoder.reserved = set(block)
        else:
            self.codec = ActionCodec.from_stats(config.action_stats, config.chunk_size, config.num_bins,
                                                config.normalization)
            self.grammar = ActionGrammar(tokenizer, self.codec.num_values, config.num_bins)
        self.low, self.high = config.action_bounds
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # -- pre: observation -> prompt -------------------------------------------------------------
    def observation_frames(self, obs: dict) -> tuple[list[list[np.ndarray]], list[str]]:
        """A batched observation dict -> per row, one frame per policy camera; and the tasks."""
        tasks = obs.get("task")
        if tasks is None:
            raise ValueError("observation lacks 'task' (the language instruction)")
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        per_camera = []
        for key in self.config.image_keys:
            if key not in obs:
                have = sorted(k for k in obs if k.startswith(IMAGE_PREFIX))
                raise ValueError(f"observation lacks camera {key!r}; it has {have}")
            images = np.asarray(obs[key])
            if images.ndim == 3:
                images = images[None]
            if images.shape[0] != len(tasks):
                raise ValueError(f"{key}: batch of {images.shape[0]} images for {len(tasks)} tasks")
            check_image(key, images[0])
            per_camera.append(images)
        return [[cam[i] for cam in per_camera] for i in range(len(tasks))], tasks

    def prompt(self, frames: list[np.ndarray], task: str) -> Encoded:
        """One row: the inference prompt (centre crop)."""
        return self.encoder.prompt(frames, task)

    def prompts(self, obs: dict) -> list[Encoded]:
        frames, tasks = self.observation_frames(obs)
        return [self.prompt(f, t) for f, t in zip(frames, tasks)]

    def training_example(self, frames: list[np.ndarray], task: str, actions: np.ndarray, rng: np.random.Generator,
                         mask_max_frac: float = 0.4, p_no_mask: float = 0.1, jitter: dict | None = None) -> Encoded:
        """One training sample: random crop, colour jitter ({brightness, contrast, saturation, hue};
        None = off), action tokens with masked augmentation, labels."""
        return self.encoder.training_example(frames, task, self.action_tokens(actions), rng, mask_max_frac, p_no_mask,
                                             jitter)

    def action_tokens(self, actions: np.ndarray) -> list[int]:
        """An (H, D) chunk -> the token ids the model is trained to write (without <|im_end|>)."""
        encoded = self.codec.encode(actions)
        return self.encoder.action_ids(encoded) if self.action_format == "text" else encoded

    def prefix_tokens(self, actions: np.ndarray) -> list[int]:
        """The tokens that begin an output whose first rows are `actions` ((d, D), d < H): each
        number spelt as the model writes it, followed by its separator (a number always follows).
        Real-time chunking forces them (vla0.policy.fast_decode, `forced`)."""
        actions = np.asarray(actions, np.float64).reshape(-1, self.config.action_dim)
        if len(actions) >= self.config.chunk_size:
            raise ValueError(f"a forced prefix of {len(actions)} steps leaves nothing of a "
                             f"{self.config.chunk_size}-step chunk to decode")
        out: list[int] = []
        for v in np.asarray(self.codec.to_bins(actions)).reshape(-1):
            out += self.grammar.spell(int(v)) + self.grammar.separator
        return out

    def require_format(self, action_format: str, who: str) -> None:
        """For code that only handles one action format: one clear error for the other."""
        if self.action_format != action_format:
            raise ValueError(f"{who} handles {action_format!r} actions only; this policy writes "
                             f"{self.action_format!r} actions (PolicyConfig.action_format)")

    # -- post: tokens -> actions ----------------------------------------------------------------
    def decode(self, tokens: list[int]) -> DecodedChunk:
        """Generated token ids (ending with <|im_end|> or not) -> the chunk they spell."""
        if self.action_format == "bins":
            return self.codec.decode(tokens)
        return self.codec.decode(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def clip(self, actions: np.ndarray) -> np.ndarray:
        """Actions clipped to the dataset's bounds: no executed action leaves what was demonstrated."""
        return np.clip(actions, self.low, self.high)
