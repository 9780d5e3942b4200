"""VLA0Policy: observation dict (LeRobot keys) -> action chunk -> ensembled action.

camera frames --PromptEncoder--> tokens + pixels --VLM + grammar--> action text
--ActionCodec--> (H, D) chunk --TemporalEnsembler--> next action, clipped to dataset bounds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from vla0.codec import ActionCodec
from vla0.config import POLICY_FILE, PolicyConfig
from vla0.ensemble import TemporalEnsembler, check_execution
from vla0.images import check_image
from vla0.model.vlm import VLM, check_model_folder, load_processor, load_vlm
from vla0.policy.drafts import draft_candidates
from vla0.policy.fast_decode import FastDecoder
from vla0.policy.grammar import ActionGrammar, GrammarLogitsProcessor
from vla0.prompt import PromptEncoder, collate


def resolve_policy_dir(path: str | os.PathLike) -> Path:
    """A policy folder, or a run folder whose final policy or latest checkpoint is used."""
    p = Path(path)
    for candidate in (p, p / "policy"):
        if (candidate / POLICY_FILE).exists():
            return candidate
    latest = p / "checkpoints" / "latest"
    if latest.exists():
        return p / "checkpoints" / latest.read_text().strip()
    raise FileNotFoundError(f"{p} is not a vla0 policy or run folder: no {POLICY_FILE}, "
                            f"policy/{POLICY_FILE} or checkpoints/latest")


def load_policy_vlm(folder: Path, dtype: torch.dtype, device) -> VLM:
    """Full weights load directly; a LoRA adapter loads on top of the base model it names."""
    if (folder / "adapter_config.json").exists():
        from peft import PeftModel
        config = PolicyConfig.load(folder)
        base = load_vlm(config.base_model, dtype, device)
        model = PeftModel.from_pretrained(base.model, folder).merge_and_unload()
        tokenizer, image_processor = load_processor(folder)
        return VLM(model, tokenizer, image_processor)
    return load_vlm(folder, dtype, device)


class VLA0Policy:
    needs_images = True

    def __init__(self, vlm: VLM, config: PolicyConfig, device: str | torch.device = "cpu",
                 temperature: float = 0.0, name: str = "vla0", fast_decode: bool = True, relaxed_k: int = 0):
        check_execution(config.action_horizon, config.ensemble, config.horizon)
        self.vlm = vlm
        self.config = config
        self.device = torch.device(device)
        self.temperature = temperature
        self.name = name
        self.encoder = PromptEncoder(vlm.tokenizer, vlm.image_processor, config)
        self.codec = ActionCodec.from_stats(config.action_stats, config.horizon, config.num_bins, config.normalization)
        self.grammar = ActionGrammar(vlm.tokenizer, self.codec.num_values, config.num_bins)
        self.ensembler = TemporalEnsembler(config.ensemble, config.ensemble_decay, config.action_horizon)
        self.bounds = (np.asarray(config.action_stats["min"], np.float32), np.asarray(config.action_stats["max"], np.float32))
        self.malformed_outputs = 0
        self._last_bins: dict[int, np.ndarray] = {}  # env id -> bins (H, D) of its latest chunk
        # Greedy decoding: exact fast decoder (same tokens as generate); sampling: HF generate.
        # relaxed_k > 0 accepts a drafted number within +-k bins of the model's own (not exact).
        self.decoder = (FastDecoder(vlm.model, vlm.tokenizer, self.grammar, self.encoder, relaxed_k=relaxed_k)
                        if fast_decode and temperature == 0 else None)
        self.vlm.model.eval()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float32,
                        **kwargs) -> "VLA0Policy":
        folder = resolve_policy_dir(path)
        config = PolicyConfig.load(folder)
        check_model_folder(folder)
        for key in ("action_horizon", "ensemble", "ensemble_decay"):
            if kwargs.get(key) is not None:
                setattr(config, key, kwargs.pop(key))
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return cls(load_policy_vlm(folder, dtype, device), config, device, **kwargs)

    # -- LeRobot policy API ---------------------------------------------------------------------
    def reset(self, env_ids=None) -> None:
        self.ensembler.reset(env_ids)
        if env_ids is None:
            self._last_bins.clear()
        for i in env_ids or []:
            self._last_bins.pop(int(i), None)

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict, env_ids=None) -> np.ndarray:
        """(B, H, D) float32 chunks, clipped to the dataset's action bounds. With env_ids, each
        env's previous chunk (shifted by the steps executed since) drafts its new one."""
        frames, tasks = self._validate(obs)
        prompts = [self.encoder.prompt([f[i] for f in frames], tasks[i]) for i in range(len(tasks))]
        drafts = None
        if env_ids is not None:
            drafts = [self._draft(int(e)) for e in env_ids]
        texts = self.generate_text(prompts, drafts)
        chunks = []
        for j, text in enumerate(texts):
            decoded = self.codec.decode(text)
            self.malformed_outputs += not decoded.well_formed
            chunks.append(decoded.actions)
            if env_ids is not None:
                self._last_bins[int(env_ids[j])] = decoded.bins
        return np.clip(np.stack(chunks), *self.bounds)

    def needs_observation(self, env_ids: list[int]) -> list[bool]:
        """Per env: will the next select_action predict a chunk, i.e. read the observation?
        Between chunks it only pops queued actions, so an env need not render those frames."""
        return [self.ensembler.needs_chunk(e) for e in env_ids]

    def select_action(self, obs: dict, env_ids=None) -> np.ndarray:
        """(B, D): the next action per environment, after temporal ensembling."""
        batch = len(obs["task"]) if "task" in obs else 0
        env_ids = list(range(batch)) if env_ids is None else [int(i) for i in env_ids]
        stale = [j for j, due in enumerate(self.needs_observation(env_ids)) if due]
        if stale:
            chunks = self.predict_action_chunk(_select_rows(obs, stale), [env_ids[j] for j in stale])
            for j, chunk in zip(stale, chunks):
                self.ensembler.add(env_ids[j], chunk)
        return np.clip(np.stack([self.ensembler.pop(e) for e in env_ids]), *self.bounds)

    # -- decoding -------------------------------------------------------------------------------
    def _draft(self, env_id: int) -> list[list[int]] | None:
        """The previous chunk without the steps executed since it was predicted (+ alternatives)."""
        prev = self._last_bins.get(env_id)
        shift = self.ensembler.steps_since_chunk(env_id)
        if prev is None or not 0 < shift < len(prev):
            return None
        return draft_candidates(prev, shift)

    def generate_text(self, prompts, drafts=None) -> list[str]:
        if self.decoder is not None:  # built only for greedy decoding
            return self.decoder.decode(prompts, drafts)
        batch = collate(prompts, self.vlm.tokenizer.pad_token_id, padding_side="left")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        width = batch["input_ids"].shape[1]
        sample = self.temperature > 0
        out = self.vlm.model.generate(
            **batch, logits_processor=[GrammarLogitsProcessor(self.grammar, width)],
            max_new_tokens=self.grammar.max_new_tokens(), do_sample=sample,
            temperature=self.temperature if sample else None, top_k=None, top_p=None,
            eos_token_id=self.grammar.end_id, pad_token_id=self.vlm.tokenizer.pad_token_id)
        return self.vlm.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)

    def _validate(self, obs: dict) -> tuple[list[np.ndarray], list[str]]:
        tasks = obs.get("task")
        if tasks is None:
            raise ValueError("observation lacks 'task' (the language instruction)")
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        frames = []
        for key in self.config.image_keys:
            if key not in obs:
                have = sorted(k for k in obs if k.startswith("observation.images."))
                raise ValueError(f"observation lacks camera {key!r}; it has {have}")
            images = np.asarray(obs[key])
            if images.ndim == 3:
                images = images[None]
            if images.shape[0] != len(tasks):
                raise ValueError(f"{key}: batch of {images.shape[0]} images for {len(tasks)} tasks")
            check_image(key, images[0])
            frames.append(images)
        return frames, tasks


def _select_rows(obs: dict, rows: list[int]) -> dict:
    out = {}
    for k, v in obs.items():
        if isinstance(v, (list, tuple)):
            out[k] = [v[i] for i in rows]
        elif isinstance(v, str):
            out[k] = v
        else:
            out[k] = np.asarray(v)[rows]
    return out
