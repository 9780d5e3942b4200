"""A small byte-level BPE tokenizer in the mould of Qwen2's, generated offline.

Why not one token per byte: the VLA-0 system prompt would cost ~250 tokens instead of
Qwen's ~50 and every training step would pay for it. Why not a bigger vocabulary: the
embedded model is tiny and the embedding table would dominate it.

Qwen's pre-tokenizer regex isolates every digit and every lone space, so no merge can
ever join digits or spaces: "512 3" stays 5 1 2 Ġ 3, exactly as with Qwen's own tokenizer.
"""

from __future__ import annotations

import json

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from vla0.prompt import PROMPT_CORPUS as _CORPUS  # the words a VLA prompt is made of

# Qwen2.5-VL's special tokens, in its order, so ids of the chat/vision markers line up by name.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# Qwen2.5-VL's chat format for image+text messages (written here, not copied: the model
# only needs the same token layout, "<|im_start|>role\n...<|im_end|>\n"; add_vision_id writes
# "Picture N: " before the N-th image, as Qwen's template does).
CHAT_TEMPLATE = (
    "{% set pictures = namespace(n=0) %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{% set pictures.n = pictures.n + 1 %}"
    "{% if add_vision_id %}Picture {{ pictures.n }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

def build_tokenizer(vocab_size: int = 1024) -> Qwen2Tokenizer:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    bpe.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    learned = json.loads(bpe.model.__getstate__())
    vocab: dict[str, int] = dict(learned["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None,
        eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
