"""Speculative drafts for the fast decoder (vla0.policy.fast_decode), for either action format:
numbers become tokens through the grammar's `spell` and `separator` (text: digits and a space;
bins: one token, nothing between).

A chunk predicted `shift` steps ago, without its executed steps, is a good guess of the next
chunk's numbers: robot actions change little from one step to the next (`draft_candidates`).
Drafter (a base of FastDecoder) turns such guesses into draft tokens number by number, picks the
alternative that matches what was written so far, falls back to prompt lookup (number m guessed
as number m-D) and re-drafts from the model's own choices after a mismatch."""

from __future__ import annotations

import numpy as np


def draft_candidates(prev_bins, shift: int = 1) -> list[list[int]]:
    """Alternative drafts from the previous chunk: shifted by the steps executed since it was
    predicted (preferred), by one step less (the model repeated itself) and by one more."""
    prev = np.asarray(prev_bins)
    shifts = [shift] + [s for s in (shift - 1, shift + 1) if 0 <= s < len(prev)]
    return [[int(v) for v in prev[s:].reshape(-1)] for s in shifts]


def is_nested(draft) -> bool:
    """A list of alternative drafts rather than one draft."""
    if isinstance(draft, np.ndarray):
        return False
    return len(draft) > 0 and isinstance(draft[0], (list, tuple, np.ndarray))


class Drafter:
    """Draft building for FastDecoder; expects self.fsm (the grammar), self.D and the drafting
    options (speculative, lookup, refine, alt_draft, min_draft, batch_draft_tokens)."""

    def _refine(self, row: _Row, states, choices, rejected: int) -> None:
        """Jacobi-style re-drafting: past the first rejected token, the model's choices (made
        given the draft, so only approximately its real ones) replace the drafted digits, number
        by number. Independent mismatches (a last digit here and there) are then all fixed in
        the next pass instead of one per pass. Only the draft changes: exactness is untouched."""
        fsm = self.fsm
        if not fsm.separator:  # one token per number (bins): each choice is a whole number
            for j in range(rejected + 1, len(states)):
                value = fsm.completed(states[j], choices[j])
                if value is not None:
                    row.refined[states[j][0]] = value
            return
        numbers: dict[int, list] = {}  # number -> [drafted digits, {digit place: choice}]
        for j, (done, cur, _) in enumerate(states):
            entry = numbers.get(done)
            if entry is None:
                entry = numbers[done] = ["", {}]
            if j > rejected:
                entry[1][len(cur)] = choices[j]
            if j + 1 < len(states) and states[j + 1][0] == done:
                entry[0] = states[j + 1][1]
        current = row.state[0]
        for n, (drafted, picked) in numbers.items():
            if not picked or n < current:
                continue
            if any((c in fsm.digit_of) != (k < len(drafted)) for k, c in picked.items()):
                # the model did not keep the drafted shape: past the next step's worth of
                # numbers its choices are misaligned noise, and the old guess is contradicted
                if n > current + max(1, self.D):
                    row.refined.pop(n, None)
                    continue
            # the model's digit where it chose one, else the drafted one; a separator chosen
            # inside the number ends it, a digit chosen after it lengthens it
            out = ""
            for k in range(len(drafted) + 1):
                c = picked.get(k)
                if c is None:
                    if k == len(drafted):
                        break
                    out += drafted[k]
                elif c in fsm.digit_of:
                    out += str(fsm.digit_of[c])
                    if k == len(drafted):
                        break
                else:
                    break
            if out and (out[0] != "0" or out == "0"):
                row.refined[n] = min(int(out), fsm.max_value)

    def _candidates(self, draft):
        """None, one flat list of numbers, or several (alternatives, the first preferred)."""
        if draft is None:
            return None
        arr = [np.asarray(c).reshape(-1) for c in draft] if is_nested(draft) else [np.asarray(draft).reshape(-1)]
        out = [[min(max(int(v), 0), self.fsm.max_value) for v in c] for c in arr if len(c)]
        return out or None

    def _pick_candidate(self, row: _Row):
        """The draft candidate that best predicted the numbers written so far, and whether it
        predicted the most recent ones exactly (then it is trusted over re-drafted guesses)."""
        cands = row.draft
        if not cands:
            return None, False
        done = len(row.numbers)
        if done == 0:
            return cands[0], True
        if len(cands) == 1:
            c = cands[0]
            need = min(done, max(1, self.D))
            return c, len(c) >= done and c[done - need:done] == row.numbers[done - need:]
        lo = max(0, done - 2 * max(1, self.D))
        recent = row.numbers[lo:done]
        best, best_key = cands[0], None
        for c in cands:
            part = c[lo:done]
            exact = sum(a == b for a, b in zip(part, recent))
            key = (-exact, sum(abs(a - b) for a, b in zip(part, recent)) + 10**6 * (len(recent) - len(part)))
            if best_key is None or key < best_key:
                best, best_key = c, key
        need = min(done, max(1, self.D))
        trusted = len(best) >= done and best[done - need:done] == row.numbers[done - need:]
        return best, trusted

    def _budget(self, rows: int, first: bool = False) -> int:
        """Draft tokens per row in a pass: batch_draft_tokens shared by the rows (at least
        min_draft each); the first pass, which also carries the prompts, gets 4x."""
        if not self.batch_draft_tokens:
            return 1 << 30
        return max(self.min_draft, (4 if first else 1) * self.batch_draft_tokens // max(1, rows))

    def _branches(self, row: _Row, budget: int) -> list[list[int]]:
        """Draft branches verified side by side: the main draft, plus the caller's other
        alternatives that agree with all numbers written so far (shorter)."""
        main = self._draft_tokens(row, budget)
        out = [main]  # possibly empty: then only the next token is decided
        cands = row.draft
        if not self.speculative or not cands or len(cands) < 2 or self.alt_draft <= 0:
            return out
        chosen, _ = self._pick_candidate(row)
        done = len(row.numbers)
        for c in cands:  # alternatives that agree with every number written so far
            if c is chosen or len(c) <= done or c[:done] != row.numbers:
                continue
            alt = self._draft_tokens(row, min(budget, self.alt_draft), candidate=c)
            if alt and main[:len(alt)] != alt:
                out.append(alt)
        return out

    def _draft_tokens(self, row: _Row, budget: int = 1 << 30, candidate=None) -> list[int]:
        """Tokens guessed for what follows the row's committed text, number by number."""
        if not self.speculative or row.state[2]:
            return []
        done, cur, _ = row.state
        N, D = self.fsm.num_values, self.D
        numbers = row.numbers
        if candidate is None:
            draft, trusted = self._pick_candidate(row)
        else:  # an alternative, taken as it is
            draft, trusted = candidate, True
        memo: dict[int, int | None] = {}

        def value(m: int):
            if m < done:
                return numbers[m]
            if m in memo:
                return memo[m]
            v = None
            if draft is not None and m < len(draft) and trusted:
                v = draft[m]
            if v is None:
                v = row.refined.get(m)
            if v is None and draft is not None and m < len(draft):
                v = draft[m]
            if v is None and self.lookup and D and m >= D:
                v = value(m - D)
            memo[m] = v
            return v

        v = value(done)
        if v is None:
            return []
        if cur and not str(v).startswith(cur):
            # the number being written already left the guess: take the first other guess that
            # agrees with its digits (re-drafted, any alternative, the same dimension a step back)
            others = [row.refined.get(done)] + [c[done] for c in row.draft or [] if done < len(c)]
            if D and done >= D:
                others.append(value(done - D))
            v = next((o for o in others if o is not None and str(o).startswith(cur)), v)
        toks = self.fsm.spell(v)[len(cur):]  # text: one token per digit, some already written
        m = done
        limit = min(row.window, budget)
        while len(toks) < limit:
            if m + 1 >= N:
                toks.append(self.fsm.end_id)
                break
            toks.extend(self.fsm.separator)
            m += 1
            v = value(m)
            if v is None:
                break
            toks.extend(self.fsm.spell(v))
        return toks[:limit]
