"""Text encoder and autoencoder wrappers, on the embedded MiniLM and on tiny Gemma-2 / DC-AE saved to disk."""

import pytest
import torch
from diffusers import AutoencoderDC
from transformers import AutoModel, AutoTokenizer, Gemma2Config, Gemma2Model

from sana_lightning.autoencoder import DCAutoencoder, PixelAutoencoder, load_autoencoder
from sana_lightning.text_encoder import TextEncoder, embedded_text_encoder_path


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    """A randomly initialised 1-layer Gemma-2 with a real tokenizer, saved like a downloaded model."""
    path = tmp_path_factory.mktemp("gemma")
    tokenizer = AutoTokenizer.from_pretrained(embedded_text_encoder_path())
    config = Gemma2Config(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    Gemma2Model(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_embedded_minilm_pads_masks_and_matches_the_raw_model():
    encoder = TextEncoder(max_length=16)
    embeds, mask = encoder(["a photo of a red circle", ""])
    assert embeds.shape == (2, 16, 384) and mask.shape == (2, 16)
    tokens = encoder.tokenizer(["a photo of a red circle"], return_tensors="pt")
    assert mask[0].sum() == tokens.input_ids.shape[1] and mask[1].sum() == 2  # [CLS] [SEP] for ""
    raw = AutoModel.from_pretrained(embedded_text_encoder_path())(**tokens).last_hidden_state
    n = tokens.input_ids.shape[1]
    torch.testing.assert_close(embeds[0, :n], raw[0], atol=1e-5, rtol=1e-5)


def test_captions_are_encoded_once_then_cached_bit_identically_whatever_their_batch(monkeypatch):
    """A cached embedding must not depend on the captions it was first met with (exact resume depends on it), so
    misses are encoded one at a time; without a cache a batch is encoded in one forward."""
    encoder = TextEncoder(max_length=8)
    seen = []
    original = encoder._encode
    monkeypatch.setattr(encoder, "_encode", lambda captions: seen.append(list(captions)) or original(captions))
    first, _ = encoder(["a", "b", "a"])
    second, _ = encoder(["b", "c"])
    assert seen == [["a"], ["b"], ["c"]]
    assert torch.equal(first[1], second[0])
    assert torch.equal(TextEncoder(max_length=8)(["c", "d", "e"])[0][0], second[1])
    uncached = TextEncoder(max_length=8, cache_size=0)
    monkeypatch.setattr(uncached, "_encode", lambda captions: seen.append(list(captions)) or original(captions))
    uncached(["a", "b", "a"])
    assert seen[-1] == ["a", "b"]


def test_cache_is_bounded_least_recently_used_first():
    encoder = TextEncoder(max_length=8, cache_size=2)
    encoder(["a", "b"])
    encoder(["a"])
    encoder(["c"])
    assert list(encoder._cache) == ["a", "c"]


def test_missing_text_encoder_path_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="set text_encoder.path to a local transformers model directory"):
        TextEncoder(str(tmp_path / "gemma-2-2b-it"))


def test_gemma_from_a_local_path_with_complex_human_instruction(tiny_gemma):
    prefix = "Given a user prompt, describe it in detail. User Prompt: "
    encoder = TextEncoder(str(tiny_gemma), max_length=10, complex_human_instruction=prefix)
    embeds, mask = encoder(["a red circle", ""])
    assert embeds.shape == (2, 10, 16) and encoder.hidden_size == 16
    # Reference: the prompt with its prefix, keeping the first token and the last max_length - 1 ones.
    model = AutoModel.from_pretrained(tiny_gemma).eval()
    total = len(encoder.tokenizer(prefix).input_ids) + 10 - 2
    tokens = encoder.tokenizer([prefix + "a red circle"], padding="max_length", max_length=total, return_tensors="pt")
    hidden = model(**tokens).last_hidden_state
    keep = [0, *range(total - 9, total)]
    torch.testing.assert_close(embeds[0], hidden[0, keep], atol=1e-5, rtol=1e-5)
    assert mask[1].sum() < mask[0].sum()  # the empty caption gets no prefix


def test_pixel_autoencoder_is_the_identity_in_pixel_space():
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    ae = load_autoencoder(None)
    assert isinstance(ae, PixelAutoencoder) and torch.equal(ae.decode(ae.encode(images)), images)


def test_dc_autoencoder_from_a_local_path_scales_latents(tiny_dc_ae):
    vae = AutoencoderDC.from_pretrained(tiny_dc_ae)
    ae = load_autoencoder(str(tiny_dc_ae))
    assert isinstance(ae, DCAutoencoder)
    assert (ae.latent_channels, ae.downsample_factor, ae.scaling_factor) == (4, 2, 0.41407)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    latents = ae.encode(images)
    assert latents.shape == (2, 4, 8, 8)
    torch.testing.assert_close(latents, vae.encode(images).latent * 0.41407)
    torch.testing.assert_close(ae.decode(latents), vae.decode(latents / 0.41407).sample.clamp(-1, 1))


def test_missing_autoencoder_path_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="set autoencoder.path to a local diffusers AutoencoderDC directory"):
        load_autoencoder(str(tmp_path / "dc-ae"))
