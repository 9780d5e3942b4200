"""FastDecoder: the same tokens as greedy `generate` under the action grammar, in fewer passes."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vla0.config import PolicyConfig
from vla0.model.tiny import build_model
from vla0.model.tokenizer import build_tokenizer
from vla0.policy.drafts import draft_candidates
from vla0.policy.fast_decode import FastDecoder
from vla0.grammar import START, ActionGrammar, GrammarLogitsProcessor
from vla0.policy.kv_cache import KVCache
from vla0.policy.policy import VLA0Policy
from vla0.prompt import collate

SHAPES = {"small": (2, 4, 100), "wide": (3, 3, 1000), "paper": (8, 7, 1000)}
FAST_SHAPES = ["small", "wide"]


def make_policy(seed: int, shape: str, init: float = 0.3) -> VLA0Policy:
    # A larger init than the default makes random models write varied numbers (0, short, long).
    vlm = build_model("tiny", seed=seed, overrides={"text_config": {"initializer_range": init}})
    H, D, B = SHAPES[shape]
    cfg = PolicyConfig(action_dim=D, cameras=["front"], chunk_size=H, num_bins=B,
                       action_stats={"min": [-1.0] * D, "max": [1.0] * D}, image_size=[28, 28])
    return VLA0Policy(vlm, cfg)


@pytest.fixture(scope="module")
def policies():
    return {(seed, shape): make_policy(seed, shape) for seed in (0, 1) for shape in SHAPES}


@pytest.fixture(scope="module")
def paper():
    return make_policy(2, "paper", init=0.1)


def prompts_for(policy, seed: int, n: int, tasks=("push the puck", "open the drawer", "reach")):
    rng = np.random.default_rng(seed)
    return [policy.processor.prompt([rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)], tasks[i % len(tasks)])
            for i in range(n)]


class TextDecoder(FastDecoder):
    """FastDecoder returning text, as the policy's processor decodes it."""

    def __init__(self, policy, **kw):
        p = policy.processor
        super().__init__(policy.vlm.model, p.grammar, policy.config.action_dim, p.pad_id, **kw)
        self.tokenizer = p.tokenizer

    def decode(self, prompts, drafts=None) -> list[str]:
        return self.tokenizer.batch_decode(self.decode_ids(prompts, drafts), skip_special_tokens=True)


def decoder(policy, **kw) -> TextDecoder:
    return TextDecoder(policy, **kw)


def bins_of(text: str) -> list[int]:
    return [int(x) for x in text.split()]


def hf_generate(policy, prompts) -> list[str]:
    """The reference: HF greedy `generate` with the grammar logits processor (as VLA0Policy did
    before the fast decoder; kept here so the comparison never becomes fast-vs-fast)."""
    tok = policy.vlm.tokenizer
    batch = collate(prompts, tok.pad_token_id, padding_side="left")
    width = batch["input_ids"].shape[1]
    out = policy.vlm.model.generate(
        **batch, logits_processor=[GrammarLogitsProcessor(policy.processor.grammar, width)],
        max_new_tokens=policy.processor.grammar.max_new_tokens(), do_sample=False, top_k=None, top_p=None,
        eos_token_id=policy.processor.grammar.end_id, pad_token_id=tok.pad_token_id)
    return tok.batch_decode(out[:, width:], skip_special_tokens=True)


_BASE: dict = {}
_TOK: dict = {}


def baseline(policy, key, prompts) -> list[str]:
    """One-by-one greedy generate (memoised per test data key)."""
    if key not in _BASE:
        _BASE[key] = [hf_generate(policy, [p])[0] for p in prompts]
    return _BASE[key]


# -- the grammar against an independent reference ----------------------------------------------
def valid_prefix(text: str, end: bool, N: int, B: int) -> bool:
    """Reference by text: could `text` (then <|im_end|> if end) begin a well-formed chunk of N
    numbers in 0..B, spelt without leading zeros and separated by single spaces?"""
    parts = text.split(" ")
    if len(parts) > N or any(not p for p in parts[:-1]):
        return False
    for p in parts:
        if p and (not p.isdigit() or int(p) > B or (p.startswith("0") and p != "0")):
            return False
    if end:
        return len(parts) == N and parts[-1] != ""
    return True


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 11), max_size=40), st.sampled_from(FAST_SHAPES))
def test_grammar_allows_exactly_the_valid_next_tokens(choices, shape):
    H, D, B = SHAPES[shape]
    if "tok" not in _TOK:
        _TOK["tok"] = build_tokenizer()
    tok = _TOK["tok"]
    grammar = ActionGrammar(tok, H * D, B)
    state, text = START, ""
    for c in choices:
        allowed = grammar.allowed(state)
        expected = tuple(sorted(t for t in grammar.ids if valid_prefix(
            text + ("" if t == grammar.end_id else tok.decode([t])), t == grammar.end_id, H * D, B)))
        assert allowed == expected, (text, allowed, expected)
        assert grammar.ids_arr[grammar.mask(state)].tolist() == list(allowed)
        t = allowed[c % len(allowed)]
        state = grammar.advance(state, t)
        if state[2]:
            assert grammar.allowed(state) == (grammar.end_id,) and len(text.split(" ")) == H * D
            break
        text += tok.decode([t])


# -- exactness ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(prefix_cache=False, forced=False, speculative=False),
                                dict(speculative=False), dict(), dict(lookup=False), dict(adaptive=True),
                                dict(refine=False, max_draft=8, first_draft=8)])
@pytest.mark.parametrize("shape", FAST_SHAPES)
def test_equals_generate_without_draft(policies, kw, shape):
    for seed in (0, 1):
        pol = policies[(seed, shape)]
        prompts = prompts_for(pol, seed, 3)
        base = baseline(pol, (seed, shape, 3), prompts)
        dec = decoder(pol, **kw)
        assert [dec.decode([p])[0] for p in prompts] == base
        for text in base:
            assert pol.processor.codec.is_well_formed(text)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from([0, 1]), shape=st.sampled_from(FAST_SHAPES),
       edits=st.lists(st.tuples(st.integers(0, 40), st.integers(-12, 12)), max_size=4),
       kind=st.sampled_from(["perturbed", "random", "short", "long", "candidates"]),
       noise=st.lists(st.integers(0, 1000), min_size=1, max_size=40),
       forced=st.booleans(), prefix=st.booleans())
def test_equals_generate_with_drafts(policies, seed, shape, edits, kind, noise, forced, prefix):
    """Any draft (good, partly wrong, random, too short or too long) gives generate's tokens."""
    pol = policies[(seed, shape)]
    prompts = prompts_for(pol, seed, 3)
    base = baseline(pol, (seed, shape, 3), prompts)
    truth = bins_of(base[0])
    if kind == "perturbed":
        draft = list(truth)
        for i, delta in edits:
            draft[i % len(draft)] = max(0, draft[i % len(draft)] + delta)
    elif kind == "random":
        draft = noise
    elif kind == "short":
        draft = truth[: len(noise) % len(truth)]
    elif kind == "long":
        draft = truth + noise
    else:  # alternatives: the decoder follows whichever matches what has been written
        draft = [noise, truth[len(noise) % 5:], truth]
    dec = decoder(pol, forced=forced, prefix_cache=prefix, max_draft=len(noise) + 4)
    assert dec.decode([prompts[0]], [draft]) == [base[0]]


def test_acceptance_bookkeeping(policies):
    pol = policies[(1, "wide")]
    prompts = prompts_for(pol, 1, 3)
    base = baseline(pol, (1, "wide", 3), prompts)
    dec = decoder(pol, adaptive=False)  # the whole rest of the draft is verified in every pass
    for p, text in zip(prompts, base):
        ids = dec.decode_ids([p], [bins_of(text)])[0]
        s = dec.last_stats
        assert s["forward_passes"] == 1  # the whole chunk verified with the prompt
        assert s["accepted_tokens"] == len(ids) == s["tokens"]
        assert ids[-1] == pol.processor.grammar.end_id
    # one wrong last digit of a 3-digit number costs exactly one extra pass
    for p, text in zip(prompts, base):
        truth = bins_of(text)
        idx = [i for i, v in enumerate(truth) if 100 < v < 990]
        if not idx:
            continue
        draft = list(truth)
        draft[idx[0]] += 1 if truth[idx[0]] % 10 < 9 else -1
        assert dec.decode([p], [draft]) == [text]
        s = dec.last_stats
        assert s["forward_passes"] == 2
        assert s["tokens"] == s["accepted_tokens"] + s["model_tokens"] + s["forced_tokens"]
    # totals accumulate; reset clears them
    assert dec.stats["chunks"] >= 3
    dec.reset()
    assert dec.stats["chunks"] == 0 and dec.stats["forward_passes"] == 0


def test_forced_tokens_save_passes(policies):
    pol = policies[(0, "wide")]
    prompts = prompts_for(pol, 0, 3)
    base = baseline(pol, (0, "wide", 3), prompts)
    plain = decoder(pol, forced=False, speculative=False)
    forced = decoder(pol, forced=True, speculative=False)
    for p, text in zip(prompts, base):
        assert plain.decode([p]) == forced.decode([p]) == [text]
        n = plain.last_stats["tokens"]
        assert plain.last_stats["forward_passes"] == n
        assert forced.last_stats["forward_passes"] == n - forced.last_stats["forced_tokens"]
        assert forced.last_stats["forced_tokens"] > 0


# -- batching ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", FAST_SHAPES)
def test_batched_equals_one_by_one(policies, shape, monkeypatch):
    pol = policies[(0, shape)]
    prompts = prompts_for(pol, 5, 5, tasks=("push", "open the top drawer of the cabinet", "reach the goal position"))
    base = baseline(pol, (5, shape, 5), prompts)
    truth = [bins_of(t) for t in base]
    rng = np.random.default_rng(0)
    drafts = [truth[0], None, [max(0, v + int(rng.integers(-3, 4))) for v in truth[2]], truth[3][:3],
              list(rng.integers(0, SHAPES[shape][2] + 1, 20))]
    dec = decoder(pol)
    batched = dec.decode(prompts, drafts)
    single = [dec.decode([p], [d])[0] for p, d in zip(prompts, drafts)]
    assert batched == single == base
    packing = decoder(pol, max_draft=12)
    packing.pack_min = 0  # pack the rows' valid cache columns whenever some are masked
    gathers = []
    original = KVCache.gather
    monkeypatch.setattr(KVCache, "gather", lambda self, cols: (gathers.append(1), original(self, cols)))
    assert packing.decode(prompts, drafts) == base
    assert gathers
    assert decoder(pol, speculative=False).decode(prompts) == base


def test_paper_shape_closed_loop(paper):
    """H=8, D=7, B=1000: a replayed episode (previous chunk as draft), batched and one by one."""
    rng = np.random.default_rng(3)
    base_img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    dec, dec1 = decoder(paper), decoder(paper, batch_draft_tokens=24)
    prev = [None, None]
    for t in range(3):
        imgs = [np.roll(base_img, t + 5 * e, axis=1) for e in range(2)]
        prompts = [paper.processor.prompt([im], "push the puck") for im in imgs]
        base = hf_generate(paper, prompts)
        drafts = [None if p is None else draft_candidates(p) for p in prev]
        assert dec.decode(prompts, drafts) == base
        assert [dec1.decode([p], [d])[0] for p, d in zip(prompts, drafts)] == base
        prev = [paper.processor.codec.decode(text).bins for text in base]
    assert dec.stats["forward_passes"] < dec.stats["tokens"] / 3


# -- caches ------------------------------------------------------------------------------------------
def test_prefix_cache_across_reset_and_images(policies):
    pol = policies[(1, "small")]
    dec = decoder(pol)
    for round_ in range(2):
        for seed in (7, 8, 9):  # a new image (and task) every call, one cached prefix
            prompts = prompts_for(pol, seed, 2, tasks=(f"task {seed}", "push"))
            assert dec.decode(prompts) == baseline(pol, ("img", seed), prompts)
        assert dec.stats["prefix_passes"] == 1
        assert len(dec._prefixes) == 1
        dec.reset()
        assert len(dec._prefixes) == 0
    # the cache belongs to the weights: after they change, reset() makes it right again
    prompts = prompts_for(pol, 7, 2, tasks=("task 7", "push"))
    model = pol.vlm.model
    old = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        dec.decode(prompts)
        with torch.no_grad():
            for p in model.model.language_model.layers[0].parameters():
                p.add_(torch.randn_like(p) * 0.3)
        dec.reset()
        assert dec.decode(prompts) == [hf_generate(pol, [p])[0] for p in prompts]
    finally:
        model.load_state_dict(old)
        _BASE.clear()


def test_relaxed_mode(policies):
    pol = policies[(0, "wide")]
    prompts = prompts_for(pol, 0, 3)
    base = baseline(pol, (0, "wide", 3), prompts)
    for p, text in zip(prompts, base):
        truth = bins_of(text)
        draft = [min(1000, v + 1) if v >= 10 and v % 10 < 9 else v for v in truth]
        assert decoder(pol, relaxed_k=0).decode([p], [draft]) == [text]
        relaxed = decoder(pol, relaxed_k=1)
        assert pol.processor.codec.is_well_formed(relaxed.decode([p], [draft])[0])
        # a tolerance wider than any digit change keeps every same-length drafted number
        loose = decoder(pol, relaxed_k=10**4)
        assert loose.decode([p], [draft]) == [" ".join(map(str, draft))]
        assert loose.last_stats["forward_passes"] == 1
