"""Constrained decoding: the model may only write exactly N integers in 0..B separated by
single spaces, then end its turn. Output is therefore always well formed, and tokens the
grammar forces (a space after a number that cannot grow, the final end-of-turn) are known
without asking the model."""

from __future__ import annotations

import numpy as np
import torch
from transformers import LogitsProcessor


class ActionGrammar:
    def __init__(self, tokenizer, num_values: int, num_bins: int):
        self.num_values = num_values
        self.num_bins = num_bins
        self.digit_ids = []
        for d in "0123456789":
            ids = tokenizer.encode(d, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"tokenizer splits digit {d!r} into {ids}: text actions need single-digit tokens")
            self.digit_ids.append(ids[0])
        space = tokenizer.encode(" ", add_special_tokens=False)
        if len(space) != 1:
            raise ValueError(f"tokenizer encodes the space as {space}: text actions need a single space token")
        self.space_id = space[0]
        self.end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._digit_of = {t: i for i, t in enumerate(self.digit_ids)}

    def state(self, generated: list[int]) -> tuple[int, str, bool]:
        """(numbers completed, digits of the number being written, finished)."""
        done, current = 0, ""
        for t in generated:
            if t == self.end_id:
                return done + 1, "", True
            if t == self.space_id:
                done, current = done + 1, ""
            else:
                current += str(self._digit_of.get(t, 0))
        return done, current, False

    def allowed(self, generated: list[int]) -> list[int]:
        done, current, finished = self.state(generated)
        if finished:
            return [self.end_id]  # keeps finished rows of a batch inert
        if not current:
            return [t for d, t in enumerate(self.digit_ids) if d <= self.num_bins]
        out = []
        if current != "0":  # no leading zeros: one spelling per value
            out = [t for d, t in enumerate(self.digit_ids) if int(current + str(d)) <= self.num_bins]
        out.append(self.space_id if done + 1 < self.num_values else self.end_id)
        return out

    def max_new_tokens(self) -> int:
        return self.num_values * (len(str(self.num_bins)) + 1)


class GrammarLogitsProcessor(LogitsProcessor):
    def __init__(self, grammar: ActionGrammar, prompt_len: int):
        self.grammar = grammar
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(input_ids[:, self.prompt_len:].tolist()):
            mask[row, self.grammar.allowed(ids)] = 0.0
        return scores + mask


class GrammarStateMachine:
    """ActionGrammar as an incremental state machine. A state is (numbers completed, digits of
    the number being written, finished); allowed sets equal ActionGrammar.allowed's."""

    def __init__(self, grammar: ActionGrammar):
        self.N, self.B = grammar.num_values, grammar.num_bins
        self.space, self.end = grammar.space_id, grammar.end_id
        self.digit_ids = list(grammar.digit_ids)
        self.digit_of = {t: d for d, t in enumerate(self.digit_ids)}
        self.ids = sorted(set(self.digit_ids) | {self.space, self.end})  # vocab order: argmax ties
        self.col = {t: i for i, t in enumerate(self.ids)}
        self._memo: dict[tuple[bool, str], tuple[int, ...]] = {}
        self._masks: dict[tuple, np.ndarray] = {}
        self.ids_arr = np.asarray(self.ids)

    def allowed(self, state) -> tuple[int, ...]:
        """Allowed token ids, ascending."""
        done, cur, finished = state
        if finished:
            return (self.end,)
        last = done + 1 >= self.N
        key = (last, cur)
        out = self._memo.get(key)
        if out is None:
            if not cur:
                toks = [t for d, t in enumerate(self.digit_ids) if d <= self.B]
            else:
                toks = [] if cur == "0" else [t for d, t in enumerate(self.digit_ids) if int(cur + str(d)) <= self.B]
                toks.append(self.end if last else self.space)
            out = self._memo[key] = tuple(sorted(toks))
        return out

    def mask(self, state) -> np.ndarray:
        """Allowed tokens as a boolean vector over self.ids."""
        key = (state[2], state[0] + 1 >= self.N, state[1])
        m = self._masks.get(key)
        if m is None:
            m = np.zeros(len(self.ids), bool)
            m[[self.col[t] for t in self.allowed(state)]] = True
            self._masks[key] = m
        return m

    def advance(self, state, tok: int):
        done, cur, finished = state
        if finished or tok == self.end:
            return (done + 1 if not finished else done, "", True)
        if tok == self.space:
            return (done + 1, "", False)
        return (done, cur + str(self.digit_of[tok]), False)
