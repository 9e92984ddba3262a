"""The frozen codecs of a flow module (text encoder, autoencoder): a batch, raw or precomputed, becomes clean latents
and caption embeddings; they are loaded from their paths and never enter a state dict."""

from dataclasses import asdict

import torch

from sana_lightning.autoencoder import AutoencoderConfig, load_autoencoder
from sana_lightning.flow import caption_drop_mask
from sana_lightning.text_encoder import TextEncoder, TextEncoderConfig


def _drop_frozen(module: "FrozenCodecs", state_dict: dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(tuple(prefix + p for p in module.frozen_prefixes))]:
        del state_dict[key]


def _restore_frozen(module: "FrozenCodecs", state_dict: dict, prefix: str, *args) -> None:
    for name in module.frozen_prefixes:
        if (part := getattr(module, name.rstrip("."))) is not None:
            state_dict.update(part.state_dict(prefix=prefix + name))


class FrozenCodecs:
    """LightningModule part holding `self.text_encoder` and `self.autoencoder`; every attribute under
    `frozen_prefixes` is dropped from state dicts (checkpoints, sharded or not) and put back on loading."""

    frozen_prefixes: tuple[str, ...] = ("text_encoder.", "autoencoder.")

    def setup_codecs(self, text_encoder: TextEncoderConfig, autoencoder: AutoencoderConfig) -> None:
        self.text_encoder = TextEncoder(**asdict(text_encoder))
        self.autoencoder = load_autoencoder(autoencoder.path, autoencoder.subfolder)
        self.register_state_dict_post_hook(_drop_frozen)
        self.register_load_state_dict_pre_hook(_restore_frozen)

    def io_channels(self) -> dict[str, int]:
        """The transformer widths the codecs dictate."""
        latent = self.autoencoder.latent_channels
        return dict(caption_channels=self.text_encoder.hidden_size, in_channels=latent, out_channels=latent)

    def encode_batch(
        self, batch: dict, generator: torch.Generator, caption_dropout: float | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Clean latents and caption embeddings of a batch, with captions dropped for classifier-free guidance
        (with probability `caption_dropout`, by default the configured one).

        Precomputed `latent` / `text_embeds` + `text_mask` (from the `precompute` command) are used as they are:
        the autoencoder and text encoder then only embed the empty caption of dropped samples."""
        captions = batch["caption"]
        dropout = self.hparams.caption_dropout if caption_dropout is None else caption_dropout
        drop = caption_drop_mask(len(captions), dropout, generator)
        if "text_embeds" in batch:
            embeds, mask = self._check_features(batch["text_embeds"], batch["text_mask"])
            null_embeds, null_mask = self.text_encoder([""])
            keep = ~drop.to(embeds.device)
            embeds = torch.where(keep[:, None, None], embeds, null_embeds)
            mask = torch.where(keep[:, None], mask, null_mask)
        else:
            embeds, mask = self.text_encoder(["" if d else c for c, d in zip(captions, drop.tolist())])
        latents = self._check_latents(batch["latent"]) if "latent" in batch else self.autoencoder.encode(batch["image"])
        return latents, embeds, mask

    def _check_latents(self, latents: torch.Tensor) -> torch.Tensor:
        channels = self.transformer.config.in_channels
        if latents.shape[1] != channels:
            raise ValueError(
                f"precomputed latents have {latents.shape[1]} channels but the transformer takes {channels}: "
                "precompute the shards with this model's autoencoder (or configure the autoencoder they came from)"
            )
        return latents

    def _check_features(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        expected = (self.text_encoder.max_length, self.text_encoder.hidden_size)
        if tuple(embeds.shape[1:]) != expected:
            raise ValueError(
                f"precomputed caption features are {tuple(embeds.shape[1:])} (tokens, width) but the text encoder "
                f"gives {expected}: precompute them with this model's text_encoder settings"
            )
        return embeds, mask.to(torch.long)
