"""The bins action format (OpenVLA's tokens): codec, token block, grammar, and every decoder on the
embedded model, through the same processor and decoders as text."""

import warnings

import numpy as np
import pytest
import torch

from vla0.bins import BinCodec, action_token_block, reference_text
from vla0.config import PolicyConfig
from vla0.grammar import START, BinGrammar
from vla0.model.tiny import build_model
from vla0.model.tokenizer import build_tokenizer
from vla0.policy.decoder import ActionDecoder
from vla0.policy.drafts import draft_candidates
from vla0.policy.policy import VLA0Policy
from vla0.processor import ActionProcessor

H, D = 3, 4
STATS = {"min": [-2.0] * D, "max": [2.0] * D, "q01": [-1.0, -1.0, 0.0, 0.5], "q99": [1.0, 1.0, 2.0, 0.5]}


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def codec(tok, **kw) -> BinCodec:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BinCodec.from_stats(STATS, H, action_token_block(tok, 256), **kw)


def test_block_is_ordinary_unused_tokens_and_fixed(tok):
    block = action_token_block(tok, 256)
    assert len(set(block)) == 256 and block == action_token_block(build_tokenizer(), 256)
    used = set(tok.encode(reference_text(tok), add_special_tokens=False))
    special = set(tok.all_special_ids) | set(tok.added_tokens_decoder)
    assert not (set(block) & (used | special))
    for d in "0123456789 _":  # the text format's tokens and the mask stay out
        assert tok.encode(d, add_special_tokens=False)[0] not in block
    assert block == sorted(block, reverse=True)  # from the top of the vocabulary down, as OpenVLA
    with pytest.raises(ValueError, match="needs 5000"):
        action_token_block(tok, 5000)


def test_codec_round_trip_is_within_half_a_bin_and_clips(tok):
    c = codec(tok)
    rng = np.random.default_rng(0)
    actions = rng.uniform(STATS["q01"], STATS["q99"], (H, D))
    back = c.decode(c.encode(actions)).actions
    half = (np.asarray(STATS["q99"]) - STATS["q01"]) / 256 / 2
    assert np.all(np.abs(back - actions) <= half + 1e-6)
    # outside q01..q99: clipped to the extreme bins; the constant dimension decodes to its value
    far = np.full((H, D), 9.0)
    bins = c.to_bins(far)
    assert np.all(bins[:, :3] == 255) and np.all(bins[:, 3] == 128)  # 0 normalised -> the middle bin
    assert np.all(c.decode(c.encode(far)).actions[:, 3] == 0.5)
    assert c.to_bins(np.full((H, D), -9.0))[:, :3].max() == 0


def test_constant_dimension_is_named(tok):
    with pytest.warns(UserWarning, match=r"dimension\(s\) \[3\] are constant"):
        BinCodec.from_stats(STATS, H, action_token_block(tok, 256))


def test_decode_repairs_and_flags(tok):
    c = codec(tok)
    ok = c.encode(np.zeros((H, D)))
    assert c.decode(ok + [tok.convert_tokens_to_ids("<|im_end|>")]).well_formed
    short = c.decode(ok[:D + 1])  # one whole step and a bit: the step repeats
    assert not short.well_formed and np.all(short.bins == short.bins[0])
    assert not c.decode([5, 6] + ok).well_formed


def test_grammar_admits_n_block_tokens_then_forces_the_end(tok):
    block = action_token_block(tok, 256)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    g = BinGrammar(block, 5, end)
    state = START
    for k in range(5):
        assert g.allowed(state) == tuple(sorted(block)) and g.mask(state).sum() == 256
        state = g.advance(state, block[k])
        assert state == (k + 1, "", False)
    assert g.allowed(state) == (end,) and g.max_new_tokens() == 6
    assert g.advance(state, end)[2] and g.spell(7) == [block[7]] and g.completed(START, block[9]) == 9
    assert g.masks(block[:5] + [end]).shape == (6, 257)


def test_config_defaults_to_text_and_bins_requires_quantile():
    raw = dict(action_dim=D, cameras=["a"], action_stats=STATS, num_bins=256)
    assert PolicyConfig.from_dict(raw).action_format == "text"  # old folders
    with pytest.raises(ValueError, match="normalization must be 'quantile'"):
        PolicyConfig(**raw, action_format="bins")
    with pytest.raises(ValueError, match="action_format must be one of"):
        PolicyConfig(**raw, action_format="words")


def make_policy(seed=0, **kw) -> VLA0Policy:
    vlm = build_model("tiny", seed=seed, overrides={"text_config": {"initializer_range": 0.3}})
    cfg = PolicyConfig(action_dim=D, cameras=["front"], chunk_size=H, num_bins=256, action_format="bins",
                       normalization="quantile", action_stats={**STATS, "q01": [-1.0] * D, "q99": [1.0] * D},
                       image_size=[28, 28], ensemble=1)
    return VLA0Policy(vlm, cfg, **kw)


@pytest.fixture(scope="module")
def policy():
    return make_policy()


def prompts(policy, n=3):
    rng = np.random.default_rng(1)
    return [policy.processor.prompt([rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)], t)
            for t in ["open the drawer", "reach the goal position", "press the button"][:n]]


def test_fast_decoder_equals_generate_with_and_without_drafts(policy):
    ps = prompts(policy)
    slow = ActionDecoder(policy.vlm.model, policy.processor, fast=False).greedy(ps)
    assert all(len(t) == H * D + 1 and t[-1] == policy.processor.grammar.end_id for t in slow)
    assert policy.decoder.greedy(ps) == slow
    bins = [policy.processor.decode(t).bins for t in slow]
    good = [draft_candidates(np.concatenate([b, b[-1:]]), 1) for b in bins]  # right but for the last step
    bad = [[[(v + 7) % 256 for v in b.reshape(-1)]] for b in bins]  # every number wrong
    assert policy.decoder.greedy(ps, good) == slow and policy.decoder.greedy(ps, bad) == slow
    policy.decoder.fast.reset()
    policy.decoder.greedy(ps, [b.reshape(-1).tolist() for b in bins])
    stats = policy.decoder.fast.last_stats
    assert stats["accepted_tokens"] == len(ps) * (H * D + 1) and stats["forward_passes"] == 1  # a perfect draft


def test_sample_and_score_agree_and_policy_decodes(policy):
    ps = prompts(policy, 2)
    dec = ActionDecoder(policy.vlm.model, policy.processor, fast=False)
    samples = dec.sample(ps, 1.0, torch.Generator().manual_seed(0))
    assert all(len(s.tokens) == H * D + 1 and s.logprobs[-1] == 0.0 for s in samples)  # the end is forced
    scored = dec.score(ps, [s.tokens for s in samples], 1.0)
    np.testing.assert_allclose(scored.logprobs.detach().numpy(), np.concatenate([s.logprobs for s in samples]),
                               atol=1e-4)
    obs = {"observation.images.front": np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
           "task": ["open the drawer", "reach the goal position"]}
    chunks = policy.predict_action_chunk(obs)
    assert chunks.shape == (2, H, D) and np.all(np.abs(chunks) <= 1) and policy.malformed_outputs == 0


def test_training_example_masks_whole_action_tokens(policy):
    p = policy.processor
    actions = np.linspace(-1, 1, H * D).reshape(H, D)
    target = p.action_tokens(actions)
    assert len(target) == H * D and set(target) <= set(p.grammar.token_of_bin)
    ex = p.training_example([np.zeros((32, 32, 3), np.uint8)], "open the drawer", actions,
                            np.random.default_rng(3), mask_max_frac=1.0, p_no_mask=0.0)
    tail = ex.input_ids[ex.prompt_len:-1]
    masked = [i for i, t in enumerate(tail) if t == p.encoder.mask_id]
    assert masked and all(ex.labels[ex.prompt_len + i] == -100 for i in masked)
    assert all(tail[i] == target[i] for i in range(len(tail)) if i not in masked)


def test_text_only_code_and_reserved_instructions_refused(policy):
    with pytest.raises(ValueError, match="handles 'text' actions only; this policy writes 'bins'"):
        policy.processor.require_format("text", "bench/decode.py")
    token = policy.vlm.tokenizer.convert_ids_to_tokens(policy.processor.grammar.token_of_bin[0])
    word = policy.vlm.tokenizer.convert_tokens_to_string([token])
    with pytest.raises(ValueError, match="uses as action bins"):
        policy.processor.prompt([np.zeros((32, 32, 3), np.uint8)], "grab the" + word)


def test_text_processor_is_unchanged(policy):
    cfg = PolicyConfig(action_dim=D, cameras=["front"], chunk_size=H, num_bins=100, action_stats=STATS)
    p = ActionProcessor(cfg, policy.vlm.tokenizer, policy.vlm.image_processor)
    text = policy.vlm.tokenizer.decode(p.action_tokens(np.zeros((H, D))))
    assert text == " ".join(["50", "50", "50", "50"] * H)


def test_a_bins_policy_folder_serves_quantized_and_the_client_gets_its_actions(tiny_model_dir, tmp_path):
    import shutil

    from vla0.client import PolicyClient
    from vla0.serve.server import PolicyServer, ServeConfig, ServerThread
    pytest.importorskip("torchao")
    folder = tmp_path / "bins"
    shutil.copytree(tiny_model_dir, folder)
    PolicyConfig(action_dim=D, cameras=["front"], chunk_size=H, num_bins=256, action_format="bins",
                 normalization="quantile", action_stats={**STATS, "q01": [-1.0] * D, "q99": [1.0] * D},
                 image_size=[28, 28], ensemble=1).save(folder)
    policy = VLA0Policy.from_pretrained(folder, quantize="ao-int8")  # the format comes from the folder
    obs = {"observation.images.front": np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8),
           "task": "open the drawer"}
    local = policy.predict_action_chunk({"observation.images.front": obs["observation.images.front"][None],
                                         "task": [obs["task"]]})[0]
    with ServerThread(PolicyServer(policy, ServeConfig(port=0))) as server, PolicyClient(server.url) as client:
        assert client.metadata["action_format"] == "bins" and client.metadata["num_bins"] == 256
        reply = client.infer(obs)
    np.testing.assert_array_equal(reply["actions"], local)
