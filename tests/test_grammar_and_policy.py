import numpy as np
import pytest

from vla0.model.vlm import load_processor
from vla0.grammar import ActionGrammar
from vla0.policy.policy import VLA0Policy


@pytest.fixture(scope="module")
def grammar(tiny_model_dir):
    tok, _ = load_processor(tiny_model_dir)
    return tok, ActionGrammar(tok, num_values=3, num_bins=250)


def test_grammar_admits_exactly_n_numbers_within_range(grammar):
    tok, g = grammar
    rng = np.random.default_rng(0)
    for _ in range(200):
        ids = []
        while not ids or ids[-1] != g.end_id:
            ids.append(int(rng.choice(g.allowed(g.state_after(ids)))))
        text = tok.decode(ids[:-1])
        parts = text.split(" ")
        assert len(parts) == 3 and all(p.isdigit() and int(p) <= 250 for p in parts), text
        assert all(p == "0" or not p.startswith("0") for p in parts)


def test_grammar_forces_separator_and_end(grammar):
    tok, g = grammar
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    after = lambda s: g.allowed(g.state_after(enc(s)))  # noqa: E731
    assert after("250") == (g.space_id,)  # cannot grow past B
    assert after("1 2 25") == (g.digit_ids[0], g.end_id)  # 250 still fits; or end
    assert after("1 2 26") == (g.end_id,)
    assert after("0") == (g.space_id,)  # no leading zeros


def obs(batch, size=40):
    rng = np.random.default_rng(1)
    return {"observation.images.front": rng.integers(0, 255, (batch, size, size, 3), dtype=np.uint8),
            "observation.images.wrist": rng.integers(0, 255, (batch, size, size, 3), dtype=np.uint8),
            "task": [f"task {i}" for i in range(batch)]}


@pytest.fixture(scope="module")
def policy(tiny_policy_dir):
    return VLA0Policy.from_pretrained(tiny_policy_dir)


def test_predict_chunk_shapes_decoding_and_batch_consistency(policy):
    chunks = policy.predict_action_chunk(obs(3))
    assert chunks.shape == (3, 2, 4) and chunks.dtype == np.float32
    # the chunk is what the greedy tokens spell: every value on the codec's grid of B + 1 levels
    tokens = policy.decoder.greedy(policy.processor.prompts(obs(3)))
    np.testing.assert_array_equal(chunks, np.stack([policy.processor.decode(t).actions for t in tokens]))
    levels = (chunks + 1) / 2 * 100  # bounds [-1, 1], B = 100
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    single = policy.predict_action_chunk({k: v[1:2] for k, v in obs(3).items()})
    np.testing.assert_allclose(single[0], chunks[1], atol=1e-6)
    assert policy.malformed_outputs == 0


def test_select_action_uses_per_env_ensembling(policy):
    policy.reset()
    o = obs(2)
    first = policy.select_action(o, env_ids=[5, 9])
    assert first.shape == (2, 4)
    chunk = policy.predict_action_chunk(o)
    second = policy.select_action(o, env_ids=[5, 9])  # averages chunk[1] of the first call and chunk[0] now
    np.testing.assert_allclose(second, (chunk[:, 1] + chunk[:, 0]) / 2, atol=1e-6)
    policy.reset([9])  # env 9 forgets its chunks; env 5 keeps its history (one step since its chunk)
    assert policy.executor.steps_since_chunk(9) == 0 and policy.executor.steps_since_chunk(5) == 1
    assert policy.executor.needs_chunk(9)


def test_compiled_policy_decodes_the_eager_chunks(policy, tiny_policy_dir):
    """--compile: the MLPs of all 2 text layers and 2 vision blocks compiled, the same greedy chunks
    at batch 1 and 3 (a second batch size reuses the dynamic graphs)."""
    compiled = VLA0Policy.from_pretrained(tiny_policy_dir, compile_mode="default")
    assert len(compiled.vlm.model.model.language_model.layers) == 2
    assert all(layer.mlp._compiled_call_impl is not None for layer in compiled.vlm.model.model.language_model.layers)
    for batch in (1, 3):
        np.testing.assert_array_equal(compiled.predict_action_chunk(obs(batch)), policy.predict_action_chunk(obs(batch)))
    with pytest.raises(ValueError, match="compile mode must be one of none, default"):
        VLA0Policy.from_pretrained(tiny_policy_dir / "not-even-a-folder", compile_mode="fast")  # before looking for files


@pytest.mark.parametrize("mutate,message", [
    (lambda o: o.pop("observation.images.wrist"), "lacks camera 'observation.images.wrist'"),
    (lambda o: o.__setitem__("observation.images.front", o["observation.images.front"].astype(np.float32)),
     "expected a uint8 image"),
    (lambda o: o.pop("task"), "lacks 'task'"),
    (lambda o: o.__setitem__("task", ["only one"]), "batch of 2 images for 1 tasks"),
])
def test_bad_observations_get_one_clear_error(policy, mutate, message):
    o = obs(2)
    mutate(o)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        policy.predict_action_chunk(o)


def test_missing_files_are_named(tmp_path, tiny_policy_dir):
    import shutil
    folder = tmp_path / "p"
    shutil.copytree(tiny_policy_dir, folder)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        VLA0Policy.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="not a vla0 policy"):
        VLA0Policy.from_pretrained(tmp_path)
