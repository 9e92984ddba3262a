"""Small transformers judges built from configs, with processors, to save like downloaded models: a CLIP (ViT + text
transformer, a CLIPTokenizer over a word list) and a Llava (CLIP vision tower + Llama text, any tokenizer that knows
`<image>`, a chat template). The defaults are the tests' tiny random sizes; Shapes verifiers use larger ones."""

import string
from collections import Counter
from collections.abc import Iterable

import torch

TEMPLATE = (
    "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}"
    "{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %} answer:{% endif %}"
)
"""The Llava's chat template: the image, the question, then " answer:" where the verdict is generated."""


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    merged, i = [], 0
    while i < len(symbols):
        if tuple(symbols[i : i + 2]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def clip_tokenizer(words: Iterable[str] = ()):
    """A `CLIPTokenizer` over lowercase letters and "-" (each also word-final, `x</w>`), with BPE merges learnt on
    `words` until each of them is one token (none: a character-level tokenizer)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + "-":
        vocab[char], vocab[char + "</w>"] = len(vocab), len(vocab) + 1
    spelled = [[*word[:-1], word[-1] + "</w>"] for word in sorted(set(words))]
    merges = []
    while pairs := Counter(pair for symbols in spelled for pair in zip(symbols, symbols[1:])):
        pair = max(sorted(pairs), key=pairs.get)  # the most frequent, ties alphabetically: deterministic
        merges.append(pair)
        vocab.setdefault("".join(pair), len(vocab))
        spelled = [_merge(symbols, pair) for symbols in spelled]
    return CLIPTokenizer(vocab=vocab, merges=merges)


def build_clip(
    tokenizer,
    width: int = 16,
    layers: int = 1,
    heads: int = 2,
    projection_dim: int = 8,
    image_size: int = 32,
    patch_size: int = 8,
    max_length: int = 77,
    seed: int = 0,
):
    """A seeded random `CLIPModel` (vision and text towers alike: `width`, `layers`, `heads`, MLP 2x) and its
    `CLIPProcessor` (images resized and cropped to `image_size`)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tower = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=heads)
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    text = dict(tower, vocab_size=len(tokenizer), max_position_embeddings=max_length, pad_token_id=1, **special)
    config = CLIPConfig(
        text_config=text,
        vision_config=dict(tower, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config)
    tokenizer.model_max_length = max_length
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_llava(
    tokenizer,
    vision_width: int = 16,
    vision_layers: int = 1,
    text_width: int = 16,
    text_layers: int = 1,
    heads: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    features: str = "default",
    init_std: float = 0.02,
    seed: int = 0,
):
    """A seeded random `LlavaForConditionalGeneration` (CLIP vision, Llama text, MLPs 2x, one key/value head) for
    `tokenizer` (which must know `<image>`), and its `LlavaProcessor` with the chat template `TEMPLATE`. `features`:
    the vision tower's last-layer tokens the language model sees, "default" (the patches) or "full" (with CLS);
    `init_std`: the standard deviation of the language model's and projector's initial weights."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    vision = CLIPVisionConfig(
        hidden_size=vision_width,
        intermediate_size=2 * vision_width,
        num_hidden_layers=vision_layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
    )
    special = {k: getattr(tokenizer, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_width,
        intermediate_size=2 * text_width,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        num_key_value_heads=1,
        initializer_range=init_std,
        **{k: v for k, v in special.items() if v is not None},
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy=features,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=features,
        chat_template=TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    return model, processor


def minilm_tokenizer():
    """The embedded MiniLM's tokenizer with an `<image>` token added (a Llava judge's tokenizer, no download)."""
    from transformers import AutoTokenizer

    from sana_lightning.text_encoder import embedded_text_encoder_path

    tokenizer = AutoTokenizer.from_pretrained(embedded_text_encoder_path())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer
