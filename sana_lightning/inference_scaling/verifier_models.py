"""Small transformers judges built from configs, with processors, to save like downloaded models: a CLIP (ViT + text
transformer, a CLIPTokenizer over a word list) or a CLIP-style dual encoder with a ConvNeXt image tower, and a Llava
(CLIP vision tower + Llama text, any tokenizer that knows `<image>`, a chat template) or a FastVLM (the same on a
ConvNeXt tower). The defaults are the tests' tiny random sizes; Shapes verifiers use larger ones."""

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
    tower: str = "vit",
):
    """A seeded random CLIP and its processor (images resized and cropped to `image_size`): with a ViT `tower`, a
    `CLIPModel` (vision and text towers alike: `width`, `layers`, `heads`, MLP 2x); with a ConvNeXt, a CLIP-style
    `VisionTextDualEncoderModel` of the same text tower and `convnext_config`'s image tower (first stage `width`)."""
    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPProcessor,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
        VisionTextDualEncoderProcessor,
    )

    text = _clip_text_config(tokenizer, width, layers, heads, max_length)
    if tower == "convnext":
        vision = convnext_config(width, layers, patch_size, image_size)
        config = VisionTextDualEncoderConfig.from_vision_text_configs(vision, text, projection_dim=projection_dim)
        processor = VisionTextDualEncoderProcessor(image_processor=_image_processor(image_size), tokenizer=tokenizer)
        return _seeded(VisionTextDualEncoderModel, config, seed), processor
    vision = dict(_tower(width, layers, heads), image_size=image_size, patch_size=patch_size)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision, projection_dim=projection_dim)
    processor = CLIPProcessor(image_processor=_image_processor(image_size), tokenizer=tokenizer)
    return _seeded(CLIPModel, config, seed), processor


def convnext_config(width: int = 16, layers: int = 1, patch_size: int = 2, image_size: int = 32, stages: int = 3):
    """A ConvNeXt image tower for `image_size` images: a `patch_size` stem, then `stages` stages of `layers` blocks,
    each twice as wide as the one before and downsampled 2x (32 px, patch 2, 3 stages: 16x16 -> 4x4 features).
    `hidden_size` is set to its last width, the feature size the dual encoder and FastVLM read."""
    from transformers import ConvNextConfig

    widths = [width * 2**i for i in range(stages)]
    config = ConvNextConfig(
        patch_size=patch_size, hidden_sizes=widths, depths=[layers] * stages, num_stages=stages, image_size=image_size
    )
    config.hidden_size = widths[-1]
    return config


def _tower(width: int, layers: int, heads: int) -> dict:
    return dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=heads)


def _clip_text_config(tokenizer, width: int, layers: int, heads: int, max_length: int):
    from transformers import CLIPTextConfig

    tokenizer.model_max_length = max_length
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=1)
    return CLIPTextConfig(
        **_tower(width, layers, heads), vocab_size=len(tokenizer), max_position_embeddings=max_length, **special
    )


def _image_processor(image_size: int):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def _seeded(model_class, config, seed: int):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model_class(config)


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
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = dict(_tower(vision_width, vision_layers, heads), image_size=image_size, patch_size=patch_size)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=_llama_config(tokenizer, text_width, text_layers, heads, init_std),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy=features,
    )
    processor = _vlm_processor(tokenizer, image_size, patch_size, features, num_additional_image_tokens=1)
    return _seeded(LlavaForConditionalGeneration, config, seed), processor


def build_fast_vlm(
    tokenizer,
    tower=None,
    text_width: int = 16,
    text_layers: int = 1,
    heads: int = 2,
    image_size: int = 32,
    init_std: float = 0.02,
    seed: int = 0,
):
    """A seeded random `FastVlmForConditionalGeneration`: a ConvNeXt image tower (`tower`, default
    `convnext_config()`) whose last feature map, one token a position, goes through the projector to a Llama text
    model as `build_llava`'s; its `LlavaProcessor` counts one `<image>` token per feature-map position."""
    from transformers import FastVlmConfig, FastVlmForConditionalGeneration

    tower = tower or convnext_config()
    config = FastVlmConfig(
        vision_config=tower,
        text_config=_llama_config(tokenizer, text_width, text_layers, heads, init_std),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    stride = tower.patch_size * 2 ** (tower.num_stages - 1)
    processor = _vlm_processor(tokenizer, image_size, stride, "full", num_additional_image_tokens=0)
    return _seeded(FastVlmForConditionalGeneration, config, seed), processor


def _llama_config(tokenizer, width: int, layers: int, heads: int, init_std: float):
    from transformers import LlamaConfig

    special = {k: getattr(tokenizer, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=1,
        initializer_range=init_std,
        **{k: v for k, v in special.items() if v is not None},
    )


def _vlm_processor(tokenizer, image_size: int, patch_size: int, features: str, num_additional_image_tokens: int):
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=_image_processor(image_size),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=features,
        chat_template=TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=num_additional_image_tokens,
    )


def minilm_tokenizer():
    """The embedded MiniLM's tokenizer with an `<image>` token added (a Llava judge's tokenizer, no download)."""
    from transformers import AutoTokenizer

    from sana_lightning.text_encoder import embedded_text_encoder_path

    # no token_type_ids: a VLM takes none (FastVLM's `generate` rejects them)
    tokenizer = AutoTokenizer.from_pretrained(
        embedded_text_encoder_path(), model_input_names=["input_ids", "attention_mask"]
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer
