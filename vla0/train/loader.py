"""The training data pipeline: which samples make each micro-batch, and turning them into tensors
in DataLoader worker processes, so that decoding and preprocessing overlap the model's step.

The order is a pure function of (seed, micro-batch number): epoch e is the permutation
default_rng([seed, e]) of all frames; global micro-batch m takes the next batch_size x world
frames of it and rank r its r-th slice of batch_size. A sample's random crop, jitter and mask
come from default_rng([seed, e, frame]). Nothing depends on workers, prefetching or where a run
was resumed, so --resume reproduces the uninterrupted run exactly and ranks never overlap.
"""

from __future__ import annotations

import gc
from typing import Callable

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from vla0.data.chunks import ChunkDataset
from vla0.processor import ActionProcessor


def text_example(processor: ActionProcessor, sample, rng: np.random.Generator, mask_max_frac: float,
                 p_no_mask: float, jitter: dict | None = None):
    """A text (or bins) head's training example: action tokens with masked augmentation, labels."""
    return processor.training_example(sample.frames, sample.task, sample.actions, rng, mask_max_frac, p_no_mask,
                                      jitter=jitter)


class TrainingExamples(Dataset):
    """(epoch, frame) -> one training example, built in a worker by make(sample, rng): a text
    head's (text_example) or a flow head's (vla0.train.stage2.Stage2.example)."""

    def __init__(self, chunks: ChunkDataset, make: Callable, seed: int):
        self.chunks, self.make, self.seed = chunks, make, seed

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, key: tuple[int, int]):
        epoch, frame = key
        return self.make(self.chunks[frame], np.random.default_rng([self.seed, epoch, frame]))


class StepSampler(Sampler):
    """Yields this rank's (epoch, frame) keys for micro-batches start..stop-1."""

    def __init__(self, num_frames: int, batch_size: int, world: int, rank: int, seed: int, start: int, stop: int):
        self.num_frames, self.batch_size, self.world, self.rank = num_frames, batch_size, world, rank
        self.seed, self.start, self.stop = seed, start, stop
        self.batches_per_epoch = batches_per_epoch(num_frames, batch_size * world)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def keys(self, micro: int) -> list[tuple[int, int]]:
        epoch, position = divmod(micro, self.batches_per_epoch)
        order = epoch_order(self.seed, epoch, self.num_frames)
        first = position * self.batch_size * self.world + self.rank * self.batch_size
        return [(epoch, int(i)) for i in order[first:first + self.batch_size]]

    def __iter__(self):
        for micro in range(self.start, self.stop):
            yield self.keys(micro)


def batches_per_epoch(num_frames: int, global_batch: int) -> int:
    return max(1, num_frames // global_batch)


_ORDER: dict[tuple[int, int, int], np.ndarray] = {}


def epoch_order(seed: int, epoch: int, num_frames: int) -> np.ndarray:
    """The shuffled frame order of an epoch, computed once per epoch (per process) rather than per step."""
    key = (seed, epoch, num_frames)
    if key not in _ORDER:
        _ORDER.clear()
        _ORDER[key] = np.random.default_rng([seed, epoch]).permutation(num_frames)
    return _ORDER[key]


def training_loader(examples: TrainingExamples, sampler: StepSampler, collate_fn: Callable, workers: int = 0,
                    prefetch: int = 4) -> DataLoader:
    """Batches in sampler order; with workers > 0 each worker builds whole micro-batches, `prefetch`
    of them ahead (the DataLoader hands them back in order). Iterate it at once: garbage is
    collected here so that no video container the parent left for the collector is freed in a
    forked worker, where FFmpeg would wait forever to join decoder threads that exist only in
    the parent (seen as a hung worker)."""
    gc.collect()
    return DataLoader(examples, batch_sampler=sampler, num_workers=workers,
                      collate_fn=collate_fn,
                      prefetch_factor=prefetch if workers else None)
