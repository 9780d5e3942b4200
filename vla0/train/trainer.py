"""`vla0 train`: fine-tune an unmodified VLM to write action chunks as text (VLA-0), or as
OpenVLA's action tokens (--action-format bins).

One batch, from disk to loss: LeRobot frames, read when drawn (ChunkDataset over a FrameSource:
videos, a memory-mapped frame cache, or memory) -> ActionProcessor.training_example (action
tokens, crop, jitter, tile, masked augmentation, labels) -> collate, all in DataLoader workers
(vla0.train.loader) -> VLM cross-entropy. One process or torchrun / accelerate launch (each rank
its slice of every global batch). The data order is a pure function of (seed, step), so --resume
continues exactly. `--head flow --from RUN_DIR`: stage 2 in the same loop (vla0.train.stage2).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from vla0.bins import NUM_BINS
from vla0.config import ACTION_FORMATS, NORMALIZATIONS, PolicyConfig, stats_to_lists
from vla0.data.chunks import ChunkDataset
from vla0.data.hub import resolve_dataset
from vla0.data.lerobot_dataset import camera_name, camera_shapes, dataset_cameras, load_lerobot, state_key_of
from vla0.data.lerobot_dataset import validate_lerobot
from vla0.data.streaming import FrameSource, build_frame_cache, check_videos
from vla0.images import JITTER_KEYS
from vla0.io import save_folder_atomic
from vla0.model.quantize import BNB_MODES, check_quantize
from vla0.model.vlm import check_model_folder, load_vlm
from vla0.options import option
from vla0.processor import ActionProcessor
from vla0.prompt import collate
from vla0.train.checkpoint import TRAINER_STATE, drop_log_after, latest_checkpoint, save_checkpoint
from vla0.train.loader import StepSampler, TrainingExamples, batches_per_epoch, text_example, training_loader
from vla0.train.model_setup import (ATTENTION, DTYPES, LORA_SCOPES, OPTIMIZERS, TRACKERS, apply_lora,
                                    check_model_options, enable_checkpointing, flat_config, make_optimizer, trackers,
                                    weights_dtype)

NORMALIZATION_CHOICES = tuple(NORMALIZATIONS)


@dataclass
class TrainConfig:
    # -- what to train on --
    dataset: str = option(help="LeRobotDataset (v3.0 or v2.1): a folder, or a hub id ORG/NAME[@REVISION]")
    out: str = option(help="run folder: checkpoints, policy/, train_log.jsonl")
    model: str | None = option(None, "model folder (vla0 init-model) or hub id, e.g. Qwen/Qwen2.5-VL-3B-Instruct "
                                     "(text head; required)")
    cameras: list[str] | None = option(None, "cameras the policy reads, as the dataset names them, e.g. image,wrist_image "
                                             "or image,image2 (default: every camera of the dataset)")
    action_key: str = option("action", "the dataset's action feature (physical-intelligence/libero: actions)")
    state_key: str | None = option(None, "the dataset's state feature (default: observation.state or state); "
                                         "recorded, not a model input")
    # -- actions as text (VLA-0) or as action tokens (OpenVLA) --
    chunk_size: int = option(8, "H, steps per predicted action chunk", aliases=("--horizon",), group="actions")
    num_bins: int | None = option(None, "text: actions are integers 0..B (default 1000); bins: the number of "
                                  "bins (default 256)", flag="--bins", group="actions")
    normalization: str = option("minmax", "per-dimension action normalisation (bins: always quantile)",
                                choices=NORMALIZATION_CHOICES, group="actions")
    action_format: str = option("text", "text: digits (VLA-0); bins: one reserved token per number (OpenVLA)",
                                choices=ACTION_FORMATS, group="actions")
    # -- images and augmentation --
    image_layout: str = option("tile", "cameras side by side in one image, or one image each",
                               choices=("tile", "separate"), group="images")
    image_size: list[int] | None = option(None, "HxW each camera is resized to (default: as recorded)", group="images")
    crop_fraction: float = option(0.875, "random-crop fraction in training, centre crop at inference (1 = off)",
                                  flag="--crop", group="images")
    mask_max_frac: float = option(0.4, "masked action augmentation: most of the action characters masked",
                                  group="images")
    mask_p_none: float = option(0.1, "fraction of samples left unmasked", group="images")
    mask_char: str = option("_", "the character masked action characters are replaced with (VLA-0's code: ?)",
                            group="images")
    vision_id: bool = option(False, "write 'Picture 1: ' before each image in the prompt (Qwen's add_vision_id, "
                             "as VLA-0's released runs)", group="images")
    color_jitter: tuple[float, float, float, float] = option(
        (0.0, 0.0, 0.0, 0.0), "training colour jitter: brightness contrast saturation hue (0 = off)", group="images")
    # -- data loading --
    workers: int = option(1, "DataLoader worker processes decoding and preprocessing (0 = in the training "
                          "process)", group="data")
    prefetch: int = option(4, "micro-batches each worker prepares ahead", group="data")
    frame_cache: str | None = option(None, "folder for a memory-mapped cache of frames resized for training, "
                                     "built once (default: decode the videos when a sample is drawn)", group="data")
    # -- optimiser and schedule --
    lr: float = option(5e-6, "AdamW learning rate", group="optimiser")
    weight_decay: float = option(0.0, group="optimiser")
    betas: tuple[float, float] = option((0.9, 0.999), group="optimiser")
    schedule: str = option("constant", "learning-rate schedule after the warm-up", choices=("constant", "cosine"),
                           group="optimiser")
    warmup_steps: int = option(0, "optimizer steps of linear warm-up", group="optimiser")
    epochs: float | None = option(None, "training length in passes over the data (or --steps)", group="optimiser")
    steps: int | None = option(None, "training length in optimizer steps (or --epochs)", group="optimiser")
    batch_size: int = option(8, "samples per process per micro-batch", group="optimiser")
    grad_accum: int = option(1, "micro-batches per optimizer step", group="optimiser")
    max_grad_norm: float = option(1.0, "gradient clipping (0 = off)", group="optimiser")
    scale_lr_with_gpus: bool = option(False, "multiply --lr by the number of processes, as VLA-0's train.py does",
                                      group="optimiser")
    precision: str = option("fp32", "autocast precision", choices=("fp32", "bf16"), group="optimiser")
    lora_rank: int = option(0, "0 = full fine-tuning", group="optimiser")
    lora_alpha: int = option(16, group="optimiser")
    lora_targets: list[str] = option(help="modules LoRA adapts", group="optimiser",
                                     default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # -- stage 2: a flow-matching action expert on a frozen stage-1 policy (vla0.train.stage2) --
    head: str = option("text", "text: fine-tune the VLM to write actions (stage 1); flow: freeze the --from "
                               "policy's VLM and train an action expert on it (stage 2)", choices=("text", "flow"),
                       group="stage 2 (--head flow)")
    from_policy: str | None = option(None, "stage-1 text policy or run folder (--head flow)", flag="--from",
                                     group="stage 2 (--head flow)")
    expert_width: int | None = option(None, "expert width (default: half the VLM's)", group="stage 2 (--head flow)")
    expert_depth: int = option(4, "expert blocks", group="stage 2 (--head flow)")
    expert_heads: int | None = option(None, "expert attention heads (default: the VLM's)", group="stage 2 (--head flow)")
    expert_layers: str = option("-1", "VLM hidden states the expert reads, e.g. -1 or =4,8,-1 (interleaved over "
                                      "the blocks)", group="stage 2 (--head flow)")
    flow_steps: int = option(10, "Euler steps at inference", group="stage 2 (--head flow)")
    expert_inputs: list[str] = option(help="vector features the expert reads besides the VLM (observation.state, ...), "
                                      "each its own encoder", group="stage 2 (--head flow)", default_factory=list)
    quantize: str = option("none", "QLoRA: LoRA on base weights frozen in 4-bit NF4 (or int8) by bitsandbytes; the "
                           "adapters also load on the unquantized base", choices=("none", *BNB_MODES), group="optimiser")
    lora_scope: str = option("language", "LoRA on the language model's layers only, or on every matching module "
                             "(the vision tower's MLPs share names such as gate_proj)", choices=LORA_SCOPES,
                             group="optimiser")
    optimizer: str = option("adamw", "adamw, or adamw8bit (bitsandbytes: 8-bit optimiser state)", choices=OPTIMIZERS,
                            group="optimiser")
    # -- model --
    model_dtype: str = option("auto", "weights dtype; auto: fp32 for full fine-tuning, the checkpoint's own "
                              "(bf16 for Qwen2.5-VL) under LoRA", choices=DTYPES, group="model")
    attn_implementation: str = option("sdpa", "attention kernel", choices=ATTENTION, group="model")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory, "
                                          "slower steps)", group="model")
    # -- inference defaults stored with the policy --
    n_action_steps: int = option(1, "steps executed per prediction", aliases=("--action-horizon",),
                                 group="inference defaults")
    ensemble: int = option(8, "temporal ensembling window (1 = off)", group="inference defaults")
    ensemble_weights: str = option("exponential", "ensembling weights: exponential (decay 0: uniform) or vla0 "
                                   "(newest chunk 1.0, older 0.5, as VLA-0's released code)",
                                   choices=("exponential", "vla0"), group="inference defaults")
    # -- run --
    save_every: int = option(500, "checkpoint every this many steps", group="run")
    keep_checkpoints: int = option(2, group="run")
    seed: int = option(0, group="run")
    resume: bool = option(False, "continue the run in --out from its latest checkpoint", group="run")
    progress: bool = option(True, "progress bar", group="run")
    log_with: str = option("auto", "experiment tracker through accelerate (auto: tensorboard when installed); "
                           "train_log.jsonl is always written", choices=TRACKERS, group="run")


def check_config(cfg: TrainConfig) -> tuple[Path, dict]:
    """Every user mistake we can see before loading anything; returns the dataset's folder (a hub
    id resolved through the hub cache) and its info.json."""
    if (cfg.epochs is None) == (cfg.steps is None):
        raise ValueError("give exactly one of --epochs or --steps")
    if cfg.schedule not in ("constant", "cosine"):
        raise ValueError(f"--schedule must be constant or cosine, got {cfg.schedule!r}")
    if cfg.precision not in ("fp32", "bf16"):
        raise ValueError(f"--precision must be fp32 or bf16, got {cfg.precision!r}")
    if cfg.action_format not in ACTION_FORMATS:
        raise ValueError(f"--action-format must be one of {list(ACTION_FORMATS)}, got {cfg.action_format!r}")
    if cfg.batch_size < 1 or cfg.grad_accum < 1 or cfg.chunk_size < 1 or (cfg.num_bins or 1) < 1:
        raise ValueError("batch size, gradient accumulation, chunk size and bins must all be >= 1")
    if not 1 <= cfg.n_action_steps <= cfg.chunk_size:
        raise ValueError(f"--n-action-steps ({cfg.n_action_steps}) must be in 1..--chunk-size ({cfg.chunk_size})")
    if cfg.quantize != "none":
        if cfg.quantize not in BNB_MODES:
            raise ValueError(f"--quantize for training must be one of {list(BNB_MODES)} (QLoRA), got {cfg.quantize!r}")
        if not cfg.lora_rank:
            raise ValueError(f"--quantize {cfg.quantize} trains LoRA adapters on a frozen quantized base: "
                             "give --lora-rank too")
        check_quantize(cfg.quantize, "cuda" if torch.cuda.is_available() else "cpu")
    if not 0 <= cfg.mask_max_frac <= 1:
        raise ValueError(f"--mask-max-frac must be in [0, 1], got {cfg.mask_max_frac}")
    if cfg.head not in ("text", "flow"):
        raise ValueError(f"--head must be text or flow, got {cfg.head!r}")
    if cfg.head == "text" and cfg.from_policy:
        raise ValueError("--from names the stage-1 policy of a --head flow run; a text run starts from --model")
    if cfg.head == "text" and not cfg.model:
        raise ValueError("give --model (the VLM to fine-tune), or --head flow --from RUN_DIR for stage 2")
    check_model_options(cfg)
    if cfg.workers < 0 or cfg.prefetch < 1:
        raise ValueError(f"--workers must be >= 0 and --prefetch >= 1, got {cfg.workers} and {cfg.prefetch}")
    if min(cfg.color_jitter) < 0 or cfg.color_jitter[3] > 0.5:
        raise ValueError(f"--color-jitter values must be >= 0 (hue <= 0.5), got {cfg.color_jitter}")
    root = resolve_dataset(cfg.dataset, cfg.cameras)
    info = validate_lerobot(root, cfg.action_key)
    state_key_of(info, cfg.state_key)
    cameras = dataset_cameras(info)
    unknown = [c for c in (cfg.cameras or []) if camera_name(c) not in cameras]
    if unknown:
        raise ValueError(f"camera(s) {unknown} not in dataset {cfg.dataset}; it has {cameras}")
    if not cameras:
        raise ValueError(f"dataset {cfg.dataset} has no camera features (dtype image or video)")
    heights = {c: hw[0] for c, hw in camera_shapes(info, [camera_name(c) for c in cfg.cameras or cameras]).items()}
    if cfg.image_layout == "tile" and not cfg.image_size and len(set(heights.values())) > 1:
        raise ValueError(f"cameras of different heights {heights} cannot be tiled as recorded: give --image-size "
                         "(each camera is resized to it) or --image-layout separate")
    out = Path(cfg.out)
    if cfg.resume and latest_checkpoint(out) is None:
        raise FileNotFoundError(f"--resume: no complete checkpoint under {out}/checkpoints")
    if not cfg.resume and (out / "checkpoints").exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if not cfg.resume and cfg.head == "text":
        check_model_folder(cfg.model)
    if cfg.head == "flow":
        from vla0.train.stage2 import check_stage2
        check_stage2(cfg, info)
    return root, info


class Trainer:
    def __init__(self, cfg: TrainConfig):
        root, info = check_config(cfg)
        self.cfg = cfg
        self.out = Path(cfg.out)
        # bf16 autocast is applied by hand: accelerate's mixed_precision is process-global state
        # that refuses a second Trainer with another precision in the same process.
        self.trackers = trackers(cfg.log_with)
        self.acc = Accelerator(cpu=not torch.cuda.is_available(), log_with=self.trackers or None,
                               project_dir=str(self.out))
        resume_from = latest_checkpoint(self.out) if cfg.resume else None
        self.stage2 = None
        if cfg.head == "flow":  # the stage-1 policy fixes the action format, cameras and images
            from vla0.train.stage2 import Stage2
            self.stage2 = Stage2(cfg, info, resume_from, root)
            self.policy_config, self.vlm, model = self.stage2.policy_config, self.stage2.vlm, self.stage2.model
            data = self.stage2.data
            check_videos(data)
        else:
            data, model = self._text_model(cfg, root, info, resume_from)
        pc = self.policy_config
        cache = None
        if cfg.frame_cache:
            def cache_files(progress: bool = False) -> dict[str, Path]:
                return build_frame_cache(data, pc.image_keys, Path(cfg.frame_cache), pc.image_size,
                                         pc.crop_fraction, progress=progress)
            if self.acc.is_main_process:  # one process builds it; the others wait, then find it built
                cache_files(cfg.progress)
            self.acc.wait_for_everyone()
            cache = cache_files()
        self.dataset = ChunkDataset(data, pc.image_keys, pc.chunk_size, FrameSource(data, cache),
                                    vector_keys=list(cfg.expert_inputs) if self.stage2 else [])
        if cfg.gradient_checkpointing:
            enable_checkpointing(model)
        self.processor = ActionProcessor(pc, self.vlm.tokenizer, self.vlm.image_processor)
        for task in sorted(set(data.tasks)):
            self.processor.encoder.check_task(task)
        if self.stage2:  # prompt, normalised actions, noise and flow time
            self.examples = TrainingExamples(self.dataset, self.stage2.example, cfg.seed)
            self.collate = self.stage2.collate
        else:
            jitter = dict(zip(JITTER_KEYS, cfg.color_jitter)) if any(cfg.color_jitter) else None
            self.examples = TrainingExamples(self.dataset, partial(
                text_example, self.processor, mask_max_frac=cfg.mask_max_frac, p_no_mask=cfg.mask_p_none,
                jitter=jitter), cfg.seed)
            self.collate = partial(collate, pad_id=self.processor.pad_id, padding_side="right")
        world = self.acc.num_processes
        self.lr = cfg.lr * (world if cfg.scale_lr_with_gpus else 1)
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg, self.lr)
        self.global_batch = cfg.batch_size * world
        self.batches_per_epoch = batches_per_epoch(len(self.dataset), self.global_batch)
        self.total_steps = cfg.steps or math.ceil(cfg.epochs * self.batches_per_epoch / cfg.grad_accum)
        # Stepped by hand once per optimizer step (accelerate's wrapper would step it per process).
        self.scheduler = get_scheduler("cosine" if cfg.schedule == "cosine" else "constant_with_warmup",
                                       optimizer, num_warmup_steps=cfg.warmup_steps,
                                       num_training_steps=self.total_steps)
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self.step = 0
        if resume_from:
            state = torch.load(resume_from / TRAINER_STATE, weights_only=False)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            self.step = state["step"]
            if self.acc.is_main_process:  # steps after the checkpoint are trained (and logged) again
                drop_log_after(self.out / "train_log.jsonl", "step", self.step)

    def _text_model(self, cfg: TrainConfig, root: Path, info: dict, resume_from: Path | None):
        """Stage 1: the policy config from the dataset, and the VLM (or its LoRA adapter) to train."""
        cameras = [camera_name(c) for c in cfg.cameras] if cfg.cameras else dataset_cameras(info)
        data = load_lerobot(root, cameras=cameras, decode=False, action_key=cfg.action_key,
                            state_key=cfg.state_key)  # tables only: frames are read when drawn
        check_videos(data)  # a truncated video fails now, not mid-run
        self.policy_config = PolicyConfig(
            action_dim=data.action.shape[1], cameras=cameras, action_stats=stats_to_lists(data.stats["action"]),
            chunk_size=cfg.chunk_size, action_format=cfg.action_format,
            num_bins=cfg.num_bins or (NUM_BINS if cfg.action_format == "bins" else 1000),
            normalization="quantile" if cfg.action_format == "bins" else cfg.normalization,
            image_layout=cfg.image_layout, image_size=cfg.image_size, crop_fraction=cfg.crop_fraction,
            mask_char=cfg.mask_char, vision_id=cfg.vision_id,
            # the frame size each camera was recorded at, so evaluation renders the same
            camera_shapes=camera_shapes(info, cameras),
            state_dim=0 if data.state is None else int(data.state.shape[1]),
            n_action_steps=cfg.n_action_steps, ensemble=cfg.ensemble, ensemble_weights=cfg.ensemble_weights,
            base_model=str(cfg.model), dataset=str(cfg.dataset), training={"train": asdict(cfg)})
        qlora = cfg.quantize != "none"
        self.vlm = load_vlm(resume_from if (resume_from and not cfg.lora_rank) else cfg.model,
                            dtype=weights_dtype(cfg.model_dtype, bool(cfg.lora_rank), cfg.model),
                            device=self.acc.device if qlora else "cpu", quantize=cfg.quantize,
                            attn_implementation=cfg.attn_implementation)
        model = self.vlm.model
        if cfg.lora_rank:
            if qlora:  # QLoRA: the quantized base frozen, its norms and embeddings in float32
                from peft import prepare_model_for_kbit_training
                model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            model = apply_lora(model, cfg, resume_from)
        return data, model

    # -- data -----------------------------------------------------------------------------------
    def batches(self, first_micro: int):
        """This rank's micro-batches from global micro-batch `first_micro` to the end of the run."""
        cfg = self.cfg
        sampler = StepSampler(len(self.dataset), cfg.batch_size, self.acc.num_processes, self.acc.process_index,
                              cfg.seed, first_micro, self.total_steps * cfg.grad_accum)
        return training_loader(self.examples, sampler, self.collate, cfg.workers, cfg.prefetch)

    # -- loop -----------------------------------------------------------------------------------
    def train(self) -> Path:
        cfg, acc = self.cfg, self.acc
        self.out.mkdir(parents=True, exist_ok=True)
        log = open(self.out / "train_log.jsonl", "a") if acc.is_main_process else None
        if self.trackers:
            acc.init_trackers("vla0", config=flat_config(cfg))
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", disable=not (cfg.progress and acc.is_main_process))
        self.model.train()
        batches = iter(self.batches(self.step * cfg.grad_accum))
        while self.step < self.total_steps:
            t0 = time.perf_counter()
            total = 0.0
            for k in range(cfg.grad_accum):
                batch = {n: t.to(acc.device, non_blocking=True) for n, t in next(batches).items()}
                sync = k == cfg.grad_accum - 1
                with (acc.no_sync(self.model) if not sync else contextlib.nullcontext(),
                      torch.autocast(acc.device.type, torch.bfloat16, enabled=cfg.precision == "bf16")):
                    loss = self.model(**batch).loss / cfg.grad_accum
                    acc.backward(loss)
                total += loss.item()
            if cfg.max_grad_norm:
                acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            loss_mean = acc.reduce(torch.tensor(total, device=acc.device), "mean").item()
            seconds = time.perf_counter() - t0
            record = {"step": self.step, "loss": loss_mean, "lr": self.scheduler.get_last_lr()[0],
                      "samples_per_s": self.global_batch * cfg.grad_accum / seconds,
                      "epoch": self.step * cfg.grad_accum / self.batches_per_epoch}
            if log:
                log.write(json.dumps(record) + "\n")
                log.flush()
            if self.trackers:
                acc.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=self.step)
            bar.set_postfix(loss=f"{loss_mean:.3f}")
            bar.update(1)
            if self.step % cfg.save_every == 0 or self.step == self.total_steps:
                self.save_checkpoint()
        bar.close()
        if log:
            log.close()
        if self.trackers:
            acc.end_training()
        return self.export_policy()

    def _write_policy(self, folder: Path, checkpoint: bool = False) -> None:
        model = self.acc.unwrap_model(self.model)
        if self.stage2:  # a stage-2 checkpoint leaves out the frozen VLM
            model.save_pretrained(folder, with_vlm=not checkpoint)
        else:
            model.save_pretrained(folder)
        self.vlm.save_processor(folder)
        config = self.policy_config
        if self.cfg.lora_rank:
            config.base_model = str(Path(self.cfg.model).resolve()) if Path(self.cfg.model).exists() else self.cfg.model
        config.save(folder)

    def save_checkpoint(self) -> None:
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            def write(tmp: Path) -> None:
                self._write_policy(tmp, checkpoint=True)
                torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                            "torch_rng": torch.get_rng_state(), "step": self.step}, tmp / TRAINER_STATE)
            save_checkpoint(self.out, self.step, write, self.cfg.keep_checkpoints)
        self.acc.wait_for_everyone()

    def export_policy(self) -> Path:
        folder = self.out / "policy"
        if self.acc.is_main_process:
            save_folder_atomic(folder, self._write_policy)
        self.acc.wait_for_everyone()
        return folder


def train(cfg: TrainConfig) -> Path:
    return Trainer(cfg).train()
