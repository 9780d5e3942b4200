"""VLA0Policy: observation dict (LeRobot keys) -> action chunk -> executed action.

    observation --ActionProcessor--> prompt --ActionDecoder (grammar)--> tokens
    --ActionProcessor--> (H, D) chunk, clipped --ChunkExecutor--> next action per env

Greedy decoding (temperature 0, the default) is the exact fast decoder; a temperature samples
the grammar-masked distribution RL optimises. A flow-head policy (config.head == "flow", stage 2)
runs one VLM prefill and its expert's Euler steps instead of decoding (vla0.policy.flow_head);
everything around the model (processor, executor, clipping) is the same. `on_chunk`, when set, receives every chunk's
(env id, frames, task, tokens, log-probs): RL rollouts record their trajectories through it. A flow
head with `flow_noise` > 0 samples noisy Euler chains instead (RL rollouts) and passes on_chunk
no tokens, the chain's step log-probs, and keywords chain= (K+1, H, D) and inputs= (its extra
inputs); otherwise it integrates the plain ODE.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch

from vla0.config import POLICY_FILE, PolicyConfig
from vla0.model.compile import check_compile_mode, compile_for_inference, position_wise_modules
from vla0.model.vlm import VLM, check_model_folder, load_processor, load_vlm
from vla0.policy.decoder import ActionDecoder
from vla0.policy.drafts import draft_candidates
from vla0.policy.executor import ChunkExecutor
from vla0.policy.flow_head import FlowExpert, FlowHead, load_expert
from vla0.processor import ActionProcessor
from vla0.prompt import collate

EXECUTION_FIELDS = ("n_action_steps", "ensemble", "ensemble_decay", "ensemble_weights", "execution", "latency_steps")


def resolve_policy_dir(path: str | os.PathLike) -> Path:
    """A policy folder, or a run folder whose final policy or latest checkpoint is used; also a
    LeRobot policy folder of the lerobot_policy_vla0 plugin (its vla0 policy is in vla0/)."""
    p = Path(path)
    for candidate in (p, p / "policy", p / "vla0", p / "pretrained_model" / "vla0"):
        if (candidate / POLICY_FILE).exists():
            return candidate
    latest = p / "checkpoints" / "latest"
    if latest.exists():
        return p / "checkpoints" / latest.read_text().strip()
    raise FileNotFoundError(f"{p} is not a vla0 policy or run folder: no {POLICY_FILE}, "
                            f"policy/{POLICY_FILE} or checkpoints/latest")


def vlm_source(folder: Path, config: PolicyConfig) -> Path:
    """The folder that holds a policy's VLM: its own, or for a stage-2 checkpoint (the expert only;
    its VLM is frozen) the stage-1 policy named by base_model."""
    own = (folder / "config.json").exists() or (folder / "adapter_config.json").exists()
    if config.head == "flow" and not own and config.base_model:
        return Path(config.base_model)
    return folder


def load_policy_vlm(folder: Path, dtype: torch.dtype = torch.float32, device="cpu", quantize: str | None = None,
                    quantize_vision: bool = False) -> VLM:
    """Full weights load directly; a LoRA adapter loads on top of the base model it names (also
    one trained by QLoRA on a 4-bit base: the adapter is plain floats). quantize: see
    vla0.model.quantize. An adapter is merged into a full-precision base (then torchao quantizes
    the result); on a bitsandbytes base it stays a separate LoRA layer, as QLoRA trained it."""
    from vla0.model.quantize import AO_MODES, BNB_MODES, apply_torchao, check_quantize

    quantize = check_quantize(quantize, device)
    if (folder / "adapter_config.json").exists():
        from peft import PeftModel
        bnb = quantize in BNB_MODES
        base = load_vlm(PolicyConfig.load(folder).base_model, dtype, device, quantize if bnb else None,
                        quantize_vision)
        model = PeftModel.from_pretrained(base.model, folder)
        if not bnb:
            model = model.merge_and_unload()
            if quantize in AO_MODES:
                apply_torchao(model, quantize, quantize_vision)
        return VLM(model, *load_processor(folder))
    return load_vlm(folder, dtype, device, quantize, quantize_vision)


def check_decoding_options(config: PolicyConfig, temperature: float | None = 0.0, fast_decode: bool | None = True,
                           relaxed_k: int | None = 0) -> None:
    """Text decoding options mean nothing to a flow head: say so before anything loads."""
    if config.head == "flow" and (temperature or fast_decode is False or relaxed_k):
        raise ValueError("this is a flow-head policy: it does not decode text, so temperature, --decoder and "
                         "--relaxed-k do not apply (its samples come from the flow's noise)")


class VLA0Policy:
    needs_images = True

    def __init__(self, vlm: VLM, config: PolicyConfig, device: str | torch.device = "cpu",
                 temperature: float = 0.0, name: str = "vla0", fast_decode: bool = True, relaxed_k: int = 0,
                 generator: torch.Generator | None = None, processor: ActionProcessor | None = None,
                 expert: FlowExpert | None = None):
        """processor: reuse one built for the same model and action format (execution settings
        are always this config's). expert: a flow-head policy's action expert."""
        check_decoding_options(config, temperature, fast_decode, relaxed_k)
        if (config.head == "flow") != (expert is not None):
            raise ValueError(f"a {config.head}-head policy {'needs' if expert is None else 'takes no'} flow expert")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if temperature > 0 and (relaxed_k or not fast_decode):
            raise ValueError("--relaxed-k and --decoder apply to greedy decoding only; sampling "
                             f"(temperature {temperature}) has one decoder")
        self.vlm = vlm
        self.config = config
        self.device = torch.device(device)
        self.temperature = temperature
        self.generator = generator  # for sampling; None: torch's global generator
        self.name = name
        self.processor = processor or ActionProcessor(config, vlm.tokenizer, vlm.image_processor)
        options = {"relaxed_k": relaxed_k} if relaxed_k else {}
        self.decoder = None if expert else ActionDecoder(vlm.model, self.processor,
                                                         fast=fast_decode and temperature == 0, **options)
        self.flow = FlowHead(vlm.model, expert.to(self.device).eval(), config) if expert else None
        self.executor = ChunkExecutor(config.ensemble, config.ensemble_decay, config.n_action_steps,
                                      config.action_bounds, config.ensemble_weights, config.execution,
                                      config.latency_steps, config.chunk_size)
        self.malformed_outputs = 0
        self.on_chunk = None
        self.flow_noise = 0.0  # flow head: per-Euler-step noise std for RL rollouts (0: the deterministic ODE)
        self._last_bins: dict[int, np.ndarray] = {}  # env id -> bins (H, D) of its latest chunk
        self.vlm.model.eval()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float32,
                        quantize: str | None = None, quantize_vision: bool = False, compile_mode: str | None = None,
                        **kwargs) -> "VLA0Policy":
        """kwargs: the constructor's options, and execution overrides (n_action_steps, ensemble,
        ensemble_decay); None leaves the stored value. quantize: int8 / nf4 (bitsandbytes),
        ao-int8 / ao-int8-weight / ao-int4 (torchao), see vla0.model.quantize; the vision tower
        stays unquantized unless quantize_vision. compile_mode: a torch.compile mode (see compile_model)."""
        check_compile_mode(compile_mode)
        folder = resolve_policy_dir(path)
        config = PolicyConfig.load(folder)
        overrides = {k: kwargs.pop(k) for k in EXECUTION_FIELDS if k in kwargs}
        config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
        source = vlm_source(folder, config)
        check_model_folder(source)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        check_decoding_options(config, **{k: kwargs[k] for k in ("temperature", "fast_decode", "relaxed_k") if k in kwargs})
        if config.head == "flow":
            kwargs["expert"] = load_expert(config, folder, device)
        policy = cls(load_policy_vlm(source, dtype, device, quantize, quantize_vision), config, device, **kwargs)
        policy.compile_model(compile_mode)
        return policy

    @property
    def expert_inputs(self) -> list[str]:
        """Observation keys a flow head's expert reads besides the images (--expert-inputs)."""
        return self.flow.input_keys if self.flow else []

    def compile_model(self, mode: str | None = "default") -> int:
        """torch.compile the VLM's MLPs (text layers and vision blocks) and a flow head's expert
        blocks for inference; attention and the KV cache stay eager (vla0.model.compile says why).
        Returns how many modules were compiled (0 for mode None / "none")."""
        modules = position_wise_modules(self.vlm.model) + (list(self.flow.expert.blocks) if self.flow else [])
        return compile_for_inference(modules, mode)

    # -- LeRobot policy API ---------------------------------------------------------------------
    def reset(self, env_ids=None) -> None:
        self.executor.reset(env_ids)
        if env_ids is None:
            self._last_bins.clear()
        for i in env_ids or []:
            self._last_bins.pop(int(i), None)

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict, env_ids=None, prefix=None, committed_steps=None) -> np.ndarray:
        """(B, H, D) float32 chunks, clipped to the dataset's action bounds. With env_ids, each
        env's previous chunk (shifted by the steps executed since) drafts its new one.
        Real-time chunking: prefix[i] (k, D) is row i's plan from this observation's step on,
        committed_steps[i] how many of its rows run while this chunk is computed. The text head
        decodes with those rows forced (exactly: the rest is the greedy continuation, under the
        grammar); the flow head inpaints them with RTC's guidance (vla0.policy.rtc)."""
        frames, tasks = self.processor.observation_frames(obs)
        prompts = [self.processor.prompt(f, t) for f, t in zip(frames, tasks)]
        if prefix is not None:
            committed_steps = [0] * len(prompts) if committed_steps is None else [int(d) for d in committed_steps]
            if len(prefix) != len(prompts) or len(committed_steps) != len(prompts):
                raise ValueError(f"{len(prefix)} prefixes and {len(committed_steps)} committed counts for "
                                 f"{len(prompts)} observations")
        if self.flow is not None:  # one prefill + the expert's integration steps
            inputs = self.flow.observation_inputs(obs)
            batch = {k: v.to(self.device) for k, v in collate(prompts, self.processor.pad_id, "right").items()}
            if prefix is not None:
                from vla0.policy.rtc import predict_rtc
                return self.processor.clip(predict_rtc(self.flow, batch, prefix, committed_steps, self.generator,
                                                       inputs=inputs))
            if self.flow_noise <= 0:
                return self.processor.clip(self.flow.predict(batch, self.generator, inputs=inputs))
            actions, chains, logprobs = self.flow.sample(batch, self.flow_noise, self.generator, inputs)
            if env_ids is not None and self.on_chunk is not None:
                for j, e in enumerate(env_ids):
                    self.on_chunk(int(e), frames[j], tasks[j], [], logprobs[j].tolist(), chain=chains[j],
                                  inputs={k: v[j].numpy() for k, v in (inputs or {}).items()})
            return self.processor.clip(actions)
        forced = None
        if prefix is not None and any(committed_steps):
            D = self.config.action_dim
            forced = [self.processor.prefix_tokens(np.asarray(p, np.float32).reshape(-1, D)[:d]) if d else []
                      for p, d in zip(prefix, committed_steps)]
            if self.temperature > 0:
                raise ValueError("real-time chunking of the text head forces the committed actions into "
                                 "greedy decoding; sampling (temperature > 0) is not supported with it")
        if self.temperature > 0:
            samples = self.decoder.sample(prompts, self.temperature, self.generator)
            tokens, logprobs = [s.tokens for s in samples], [s.logprobs for s in samples]
        else:
            drafts = None if env_ids is None else [self._draft(int(e)) for e in env_ids]
            tokens, logprobs = self.decoder.greedy(prompts, drafts, forced), None
        chunks = []
        for j, toks in enumerate(tokens):
            decoded = self.processor.decode(toks)
            self.malformed_outputs += not decoded.well_formed
            chunks.append(decoded.actions)
            if env_ids is not None:
                self._last_bins[int(env_ids[j])] = decoded.bins
                if self.on_chunk is not None:
                    self.on_chunk(int(env_ids[j]), frames[j], tasks[j], toks, None if logprobs is None else logprobs[j])
        return self.processor.clip(np.stack(chunks))

    def needs_observation(self, env_ids: list[int]) -> list[bool]:
        """Per env: will the next select_action predict a chunk, i.e. read the observation?
        Between chunks it only pops queued actions, so an env need not render those frames."""
        return [self.executor.needs_chunk(e) for e in env_ids]

    def episode_stats(self, env_id: int) -> dict:
        """What env_id executed since its reset: chunk-boundary jumps, jerk, stalls (the executor's)."""
        return self.executor.episode_stats(env_id)

    def select_action(self, obs: dict, env_ids=None) -> np.ndarray:
        """(B, D): the next action per environment, after temporal ensembling."""
        env_ids = list(range(len(obs["task"]) if "task" in obs else 0)) if env_ids is None else env_ids
        return self.executor.select_action(obs, env_ids, self.predict_action_chunk)

    def _draft(self, env_id: int) -> list[list[int]] | None:
        """The previous chunk without the steps executed since it was predicted (+ alternatives)."""
        prev = self._last_bins.get(env_id)
        shift = self.executor.steps_since_chunk(env_id)
        if prev is None or not 0 < shift < len(prev):
            return None
        return draft_candidates(prev, shift)
