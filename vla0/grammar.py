"""The action grammars: what the model may write as an action chunk, one per action format.

text (VLA-0, `ActionGrammar`): exactly N integers in 0..B, each spelt without leading zeros,
separated by single spaces, then end its turn. A token the grammar forces (a space after a number
that cannot grow without exceeding B or that is "0", the <|im_end|> after the N-th number) is
known without asking the model.
bins (OpenVLA, `BinGrammar`): exactly N tokens of the action block (vla0.bins), one per number,
then <|im_end|> (forced).

Output is therefore always well formed. Both are the same state machine interface, which every
decoder uses: a state is (numbers completed, digits of the number being written, finished);
`advance` moves it by one token, `allowed` lists the admitted token ids, `mask` gives them as a
boolean row over the grammar's own tokens (`ids`, in vocabulary order, so an argmax over them
breaks ties as `generate` does: lowest id first). The fast decoder's drafts go through `spell`
(a number's tokens), `separator` (the tokens between two numbers) and `completed` (the number a
token completes, if any).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import LogitsProcessor

State = tuple[int, str, bool]
START: State = (0, "", False)


class _Grammar:
    """What both grammars share: walking a token sequence through the state machine."""
    ids: list[int]

    def state_after(self, tokens, state: State = START) -> State:
        for t in tokens:
            state = self.advance(state, t)
        return state

    def masks(self, tokens: list[int]) -> np.ndarray:
        """(len(tokens), len(ids)): the mask in force before each token of a written sequence."""
        state, rows = START, []
        for t in tokens:
            rows.append(self.mask(state))
            state = self.advance(state, t)
        return np.stack(rows) if rows else np.zeros((0, len(self.ids)), bool)

    def _index(self) -> None:
        self.ids_arr = np.asarray(self.ids)
        self.col = {t: i for i, t in enumerate(self.ids)}


class ActionGrammar(_Grammar):
    """Text actions (VLA-0): N integers in 0..B as digits and single spaces."""
    action_format = "text"

    def __init__(self, tokenizer, num_values: int, num_bins: int):
        self.num_values = num_values  # N = H * D
        self.num_bins = num_bins  # B
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
        self.digit_of = {t: d for d, t in enumerate(self.digit_ids)}
        self.ids = sorted(set(self.digit_ids) | {self.space_id, self.end_id})  # the grammar's tokens
        self._index()
        self.max_value = num_bins  # the largest number
        self.separator = [self.space_id]
        self._allowed: dict[tuple[bool, str], tuple[int, ...]] = {}
        self._masks: dict[tuple[bool, bool, str], np.ndarray] = {}

    def advance(self, state: State, token: int) -> State:
        done, cur, finished = state
        if finished:
            return state
        if token == self.end_id:
            return (done + 1, "", True)
        if token == self.space_id:
            return (done + 1, "", False)
        return (done, cur + str(self.digit_of[token]), False)

    def spell(self, value: int) -> list[int]:
        return [self.digit_ids[int(c)] for c in str(value)]

    def completed(self, state: State, token: int) -> int | None:
        """The number that `token` completes in `state` (a separator or the end after digits)."""
        done, cur, finished = state
        return int(cur) if cur and not finished and token in (self.space_id, self.end_id) else None

    def allowed(self, state: State) -> tuple[int, ...]:
        """The admitted token ids, ascending. A finished state admits only <|im_end|>, which
        keeps finished rows of a batch inert."""
        done, cur, finished = state
        if finished:
            return (self.end_id,)
        last = done + 1 >= self.num_values
        out = self._allowed.get((last, cur))
        if out is None:
            if not cur:
                toks = [t for d, t in enumerate(self.digit_ids) if d <= self.num_bins]
            else:  # no leading zeros: one spelling per value
                toks = [] if cur == "0" else [t for d, t in enumerate(self.digit_ids)
                                              if int(cur + str(d)) <= self.num_bins]
                toks.append(self.end_id if last else self.space_id)
            out = self._allowed[(last, cur)] = tuple(sorted(toks))
        return out

    def mask(self, state: State) -> np.ndarray:
        """`allowed(state)` as a boolean vector over `ids`."""
        key = (state[2], state[0] + 1 >= self.num_values, state[1])
        m = self._masks.get(key)
        if m is None:
            m = np.zeros(len(self.ids), bool)
            m[[self.col[t] for t in self.allowed(state)]] = True
            self._masks[key] = m
        return m

    def max_new_tokens(self) -> int:
        return self.num_values * (len(str(self.num_bins)) + 1)


class BinGrammar(_Grammar):
    """Discrete action tokens (OpenVLA): N tokens of the action block, then <|im_end|>. A state
    is (numbers completed, "", finished): a number is one token, so none is ever half written."""
    action_format = "bins"

    def __init__(self, token_ids: list[int], num_values: int, end_id: int):
        if end_id in token_ids or len(set(token_ids)) != len(token_ids):
            raise ValueError("action tokens must be distinct and exclude <|im_end|>")
        self.num_values = num_values  # N = H * D
        self.token_of_bin = list(token_ids)  # bin k -> token id
        self.bin_of = {t: k for k, t in enumerate(token_ids)}
        self.end_id = end_id
        self.max_value = len(token_ids) - 1
        self.separator: list[int] = []
        self.ids = sorted(set(token_ids) | {end_id})
        self._index()
        self._number_allowed = tuple(sorted(token_ids))
        self._number_mask = np.asarray([t != end_id for t in self.ids])
        self._end_mask = ~self._number_mask

    def advance(self, state: State, token: int) -> State:
        done, _, finished = state
        if finished:
            return state
        return (done, "", True) if token == self.end_id else (done + 1, "", False)

    def spell(self, value: int) -> list[int]:
        return [self.token_of_bin[value]]

    def completed(self, state: State, token: int) -> int | None:
        return None if state[2] else self.bin_of.get(token)

    def allowed(self, state: State) -> tuple[int, ...]:
        done, _, finished = state
        return (self.end_id,) if finished or done >= self.num_values else self._number_allowed

    def mask(self, state: State) -> np.ndarray:
        return self._end_mask if state[2] or state[0] >= self.num_values else self._number_mask

    def max_new_tokens(self) -> int:
        return self.num_values + 1


class GrammarLogitsProcessor(LogitsProcessor):
    """The grammar for transformers' `generate` (the baseline the fast decoder is checked against)."""

    def __init__(self, grammar: ActionGrammar, prompt_len: int):
        self.grammar = grammar
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(input_ids[:, self.prompt_len:].tolist()):
            mask[row, list(self.grammar.allowed(self.grammar.state_after(ids)))] = 0.0
        return scores + mask
