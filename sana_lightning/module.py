"""`SanaFlowModule`: flow-matching training of diffusers' `SanaTransformer2DModel` with frozen text/image codecs."""

import json
from dataclasses import asdict, dataclass, is_dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from diffusers import SanaTransformer2DModel
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch.distributed.tensor import DTensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from sana_lightning.autoencoder import load_autoencoder
from sana_lightning.callbacks.preemption import PreemptionCheckpoint
from sana_lightning.checkpoints import load_checkpoint_transformer
from sana_lightning.flow import (
    FlowConfig,
    add_noise,
    caption_drop_mask,
    flow_loss,
    sample_sigmas,
    timesteps_from_sigmas,
)
from sana_lightning.presets import build_transformer
from sana_lightning.pruning import CalibrationBatch
from sana_lightning.resume import repair_epoch_end_checkpoint
from sana_lightning.sampling import SamplerConfig, denoise, initial_noise, make_scheduler
from sana_lightning.sharding import ShardingConfig, is_sharded, shard_transformer
from sana_lightning.text_encoder import TextEncoder


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


@dataclass
class AutoencoderConfig:
    """The frozen autoencoder."""

    path: str | None = None
    """Local diffusers `AutoencoderDC` directory (DC-AE f32c32 for real Sana); empty: pixel space."""
    subfolder: str | None = None


def _finite(value: torch.Tensor) -> bool:
    local = value.to_local() if isinstance(value, DTensor) else value
    return bool(torch.isfinite(local).all())


def _config(cls, value):
    """A config dataclass from itself, a dict (as stored in checkpoints) or None (defaults)."""
    return cls(**value) if isinstance(value, dict) else value or cls()


def _drop_frozen(module: "SanaFlowModule", state_dict: dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(tuple(prefix + p for p in module.frozen_prefixes))]:
        del state_dict[key]


def _restore_frozen(module: "SanaFlowModule", state_dict: dict, prefix: str, *args) -> None:
    for name in module.frozen_prefixes:
        if (part := getattr(module, name.rstrip("."))) is not None:
            state_dict.update(part.state_dict(prefix=prefix + name))


class NonFiniteError(RuntimeError):
    """Training met a NaN/Inf loss, gradient norm or weight; nothing non-finite was stepped into or saved."""


def _adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)


class SanaFlowModule(L.LightningModule):
    """Rectified-flow (velocity) training of Sana with caption dropout, EMA weights and fixed-noise validation.

    The text encoder and autoencoder are loaded from their paths and never stored in checkpoints.
    """

    frozen_prefixes: tuple[str, ...] = ("text_encoder.", "autoencoder.")

    def __init__(
        self,
        preset: str = "small",
        transformer: dict[str, Any] | None = None,
        pretrained: str | None = None,
        text_encoder: TextEncoderConfig | dict | None = None,
        autoencoder: AutoencoderConfig | dict | None = None,
        flow: FlowConfig | dict | None = None,
        sampler: SamplerConfig | dict | None = None,
        image_size: int = 32,
        caption_dropout: float = 0.1,
        ema_decay: float | None = 0.999,
        optimizer: OptimizerCallable = _adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
        sharding: ShardingConfig | dict | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        text_encoder = _config(TextEncoderConfig, text_encoder)
        autoencoder = _config(AutoencoderConfig, autoencoder)
        self.flow = _config(FlowConfig, flow)
        self.sampler = _config(SamplerConfig, sampler)
        self.sharding = _config(ShardingConfig, sharding)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        # Plain dicts in the hyper-parameters (also those of subclasses) keep checkpoints `weights_only` loadable.
        self.hparams.update({k: asdict(v) for k, v in self.hparams.items() if is_dataclass(v)})
        self.text_encoder = TextEncoder(**asdict(text_encoder))
        self.autoencoder = load_autoencoder(autoencoder.path, autoencoder.subfolder)
        latent_default = {"sample_size": image_size // self.autoencoder.downsample_factor}
        self.transformer = self._build_transformer(preset, {**latent_default, **(transformer or {})}, pretrained)
        self.latent_size = self._latent_size(image_size)
        self.ema = (
            AveragedModel(self.transformer, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            if ema_decay
            else None
        )
        if self.ema is not None:
            self.ema.requires_grad_(False)  # averaged, never trained
        # Frozen parts never enter a state dict (checkpoints, sharded or not); loading puts the current ones back.
        self.register_state_dict_post_hook(_drop_frozen)
        self.register_load_state_dict_pre_hook(_restore_frozen)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.skipped_samples = 0

    def _io_channels(self) -> dict[str, int]:
        """The transformer widths the codecs dictate."""
        latent = self.autoencoder.latent_channels
        return dict(caption_channels=self.text_encoder.hidden_size, in_channels=latent, out_channels=latent)

    def _check_io(self, model: SanaTransformer2DModel, name: str) -> None:
        for key, expected in self._io_channels().items():
            if model.config[key] != expected:
                raise ValueError(
                    f"{name} has {key}={model.config[key]} but the text encoder / autoencoder give {expected}: "
                    "configure the text_encoder and autoencoder it was trained with"
                )

    def _build_transformer(self, preset: str, overrides: dict, pretrained: str | None) -> SanaTransformer2DModel:
        """From a preset (+ overrides) or a local diffusers directory; its input/caption widths must fit the codecs."""
        if pretrained:
            model = load_checkpoint_transformer(pretrained)
            self._check_io(model, f"transformer '{pretrained}'")
            return model
        io_channels = self._io_channels()
        for key, value in overrides.items():
            if key in io_channels and value != io_channels[key]:
                raise ValueError(
                    f"transformer.{key}={value} does not match the encoders ({io_channels[key]}): remove the override"
                )
        return build_transformer(preset, **{**overrides, **io_channels})

    def _latent_size(self, image_size: int) -> int:
        multiple = self.transformer.config.patch_size * self.autoencoder.downsample_factor
        if image_size <= 0 or image_size % multiple:
            raise ValueError(
                f"image_size {image_size} is not divisible by patch_size x autoencoder downsampling = {multiple}: "
                f"use a multiple of {multiple} (e.g. {max(multiple, round(max(image_size, 1) / multiple) * multiple)})"
            )
        return image_size // self.autoencoder.downsample_factor

    # ----------------------------------------------------------------------------------------------- training

    def noise_generator(self, *keys: int) -> torch.Generator:
        """A CPU generator seeded by (seed, *keys): the same draws on any device and after any resume."""
        return torch.Generator().manual_seed(hash((self.hparams.seed, *keys)) & 0x7FFF_FFFF_FFFF_FFFF)

    def velocity(self, transformer, latents, sigmas, embeds, mask) -> torch.Tensor:
        timestep = timesteps_from_sigmas(sigmas).to(latents) * transformer.config.timestep_scale
        return transformer(latents, encoder_hidden_states=embeds, encoder_attention_mask=mask, timestep=timestep).sample

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

    def flow_inputs(
        self, batch: dict, generator: torch.Generator, sigmas: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Everything one training step feeds the transformer; all randomness (dropout, noise, and the noise levels
        unless `sigmas` are given) drawn from `generator`."""
        x0, embeds, mask = self.encode_batch(batch, generator)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        sigmas = sample_sigmas(len(x0), self.flow, generator) if sigmas is None else sigmas
        return dict(x0=x0, noise=noise, sigmas=sigmas, noisy=add_noise(x0, noise, sigmas), embeds=embeds, mask=mask)

    def flow_step(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """The training loss of one batch."""
        inputs = self.flow_inputs(batch, generator)
        prediction = self.velocity(
            self.transformer, inputs["noisy"], inputs["sigmas"], inputs["embeds"], inputs["mask"]
        )
        return flow_loss(prediction, inputs["x0"], inputs["noise"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # The stream's own (epoch, index) of the batch keys its noise, so a resumed run draws the same noise.
        epoch, index = batch.get("position", (self.current_epoch, batch_idx))
        loss = self.flow_step(batch, self.noise_generator(self.global_rank, epoch, index))
        self._last_step = {"loss": loss.detach(), "keys": batch.get("key")}
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["caption"]))
        if batch.get("skipped"):
            self.skipped_samples += int(batch["skipped"])
            self.log("data/skipped_samples", float(self.skipped_samples), reduce_fx="sum", sync_dist=True)
        return loss

    # --------------------------------------------------------------------------------------- non-finite guard

    def on_before_optimizer_step(self, optimizer) -> None:
        """Stop before the update when the loss or the gradient norm is NaN/Inf (the weights stay the last good)."""
        self._grad_norm = self._gradient_norm()
        norm = self._grad_norm.full_tensor() if isinstance(self._grad_norm, DTensor) else self._grad_norm
        self.log("train/grad_norm", norm.detach(), batch_size=1)
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16 loss scaling skips non-finite steps itself
        if not self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(norm)), all=True):
            last = getattr(self, "_last_step", {})
            loss, keys = last.get("loss", torch.tensor(float("nan"))), last.get("keys") or []
            shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
            good = self._last_good_checkpoint()
            restart = (
                f"last good checkpoint: {good}; start a run from its weights with a lower learning rate "
                f"(--model.init_args.pretrained={good}) or check those samples"
                if good
                else "no checkpoint was written yet; lower the learning rate or check those samples"
            )
            raise NonFiniteError(
                f"non-finite training at step {self.global_step + 1}: loss {loss.item():.4g}, gradient norm "
                f"{norm.item():.4g} (batch: {shown or 'no keys'}); stopped before the update, nothing saved; {restart}"
            )

    def _gradient_norm(self) -> torch.Tensor:
        """The norm of the full gradient, also when the backbone is sharded."""
        model = self.trainer.model
        if hasattr(model, "clip_grad_norm_"):  # FSDPStrategy wraps the module in FullyShardedDataParallel
            return model.clip_grad_norm_(float("inf"))
        return torch.nn.utils.get_total_norm([p.grad for p in self.transformer.parameters() if p.grad is not None])

    def _last_good_checkpoint(self) -> str:
        paths = [
            path
            for callback in self.trainer.checkpoint_callbacks
            for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", ""))
            if path and Path(path).exists()
        ]
        paths += [self.trainer.ckpt_path] if self.trainer.ckpt_path else []
        return max(paths, key=lambda p: Path(p).stat().st_mtime) if paths else None

    def _check_finite_weights(self) -> None:
        bad = [name for name, value in self.state_dict().items() if value.is_floating_point() and not _finite(value)]
        if not self.trainer.strategy.reduce_boolean_decision(not bad, all=True):
            good = self._last_good_checkpoint() or "none"
            raise NonFiniteError(
                f"refusing to save a checkpoint at step {self.global_step}: non-finite weights ("
                f"{', '.join(bad[:3]) or 'on another rank'}); last good checkpoint: {good}"
            )

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimizer step, then the EMA update: both are in any checkpoint written after the step."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update_parameters(self.transformer)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.fixed_noise_loss(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.fixed_noise_loss(batch, batch_idx, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Images `[B, 3, H, W]` in [0, 1] for the batch's captions (seeds: batch index x batch size + i)."""
        captions = batch["caption"]
        return self.generate(captions, seeds=batch_idx * len(captions))

    def fixed_noise_loss(self, batch: dict, batch_idx: int, stage: str) -> None:
        """Loss on fixed noise and evenly spaced noise levels, so curves compare across runs and steps."""
        size = len(batch["caption"])
        sigmas = (torch.arange(size) + 0.5) / size
        inputs = self.flow_inputs(batch, self.noise_generator(-1, batch_idx), sigmas)
        for name, transformer in self.transformers().items():
            prediction = self.velocity(transformer, inputs["noisy"], sigmas, inputs["embeds"], inputs["mask"])
            loss = flow_loss(prediction, inputs["x0"], inputs["noise"])
            self.log(f"{stage}/{name}", loss, prog_bar=name == "loss", sync_dist=True, batch_size=size)

    def calibration_batch(self, batch: dict, seed: int = 0) -> CalibrationBatch:
        """Fixed inputs for block-importance statistics: clean latents and embeddings of `batch` (raw or
        precomputed shards, no caption dropout), seeded noise."""
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.no_grad():
            x0, embeds, mask = self.encode_batch(batch, torch.Generator().manual_seed(seed), caption_dropout=0.0)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0)
        return CalibrationBatch(x0, embeds, mask, noise)

    def calibration_sigmas(self, steps: int = 10) -> list[float]:
        """The noise levels the sampler visits in `steps` steps (the default calibration timesteps)."""
        scheduler = make_scheduler(replace(self.sampler, steps=steps))
        scheduler.set_timesteps(steps)
        return [float(s) for s in scheduler.sigmas[:-1]]

    def transformers(self) -> dict[str, torch.nn.Module]:
        """The trained weights, and their EMA when kept, by the name their validation loss is logged under."""
        return {"loss": self.transformer} | ({"loss_ema": self.ema.module} if self.ema is not None else {})

    def configure_model(self) -> None:
        """Under `ModelParallelStrategy` (which sets `device_mesh`): FSDP2-shard the backbone and its EMA."""
        if self.device_mesh is None or is_sharded(self.transformer):
            return
        if self.device_mesh["tensor_parallel"].size() > 1:
            raise ValueError("Sana is sharded with FSDP only: use sana_lightning.sharding.FSDP2Strategy as strategy")
        mesh = self.device_mesh["data_parallel"]
        shard_transformer(self.transformer, mesh, self.sharding)
        if self.ema is not None:
            shard_transformer(self.ema.module, mesh, replace(self.sharding, activation_checkpointing=False))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Norm clipping over the (possibly sharded) backbone with the full gradient's norm (measured once, by the
        non-finite guard)."""
        if not gradient_clip_val:
            return
        if gradient_clip_algorithm not in (None, "norm"):
            raise ValueError(f"gradient_clip_algorithm={gradient_clip_algorithm!r} is not supported: use 'norm'")
        model = self.trainer.model
        if hasattr(model, "clip_grad_norm_"):  # FSDPStrategy wraps the module in FullyShardedDataParallel
            model.clip_grad_norm_(gradient_clip_val)
        else:
            grads = [p for p in self.transformer.parameters() if p.grad is not None]
            torch.nn.utils.clip_grads_with_norm_(grads, gradient_clip_val, self._grad_norm)

    def parameter_groups(self) -> list[dict]:
        """Optimizer parameter groups; a group's `lr_scale` multiplies the configured learning rate."""
        return [{"params": list(self.transformer.parameters())}]

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameter_groups())
        for group in optimizer.param_groups:
            group["lr"] *= group.get("lr_scale", 1.0)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------------------ checkpoints

    def configure_callbacks(self) -> list[L.Callback]:
        """A checkpoint at the next step boundary on SIGTERM / SIGUSR1 (preemption), in every run."""
        return [PreemptionCheckpoint()]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._trainer is not None:
            self._check_finite_weights()
        checkpoint["transformer_config"] = dict(self.transformer.config)  # rebuilds it without this code's presets
        checkpoint["skipped_samples"] = self.skipped_samples

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_samples = checkpoint.get("skipped_samples", 0)
        repair_epoch_end_checkpoint(checkpoint)

    # ------------------------------------------------------------------------------------------------- sampling

    SETTINGS = ("text_encoder", "autoencoder", "flow", "sampler", "image_size", "caption_dropout", "seed")
    """The hyper-parameters that rebuild a trained model for sampling and analysis (saved by `export` too)."""

    @staticmethod
    def from_checkpoint(path: str, weights: str = "ema", **settings) -> "SanaFlowModule":
        """Any sana-lightning checkpoint (flow, growth, recovery) as a plain module for sampling and analysis:
        its transformer (EMA weights by default) and the encoders it was trained with. A diffusers directory (an
        exported model or a Sana pipeline) takes these settings from the `sana_lightning.json` that `export` writes
        or from `settings` (e.g. `text_encoder={"path": ...}`, `autoencoder=...`, `image_size=...`)."""
        from sana_lightning.checkpoints import read_checkpoint, resolve_path

        path = resolve_path(path)
        if Path(path).is_dir():
            saved = Path(path, "sana_lightning.json")
            hparams = json.loads(saved.read_text()) if saved.exists() else {}
        else:
            hparams = read_checkpoint(path)["hyper_parameters"]
        hparams |= {k: v for k, v in settings.items() if v is not None}
        chosen = {k: hparams[k] for k in SanaFlowModule.SETTINGS if k in hparams}
        module = SanaFlowModule(pretrained=path, ema_decay=None, **chosen)  # EMA weights
        if weights != "ema":
            module.transformer.load_state_dict(load_checkpoint_transformer(path, weights).state_dict())
        return module.eval()

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        seeds: list[int] | int = 0,
        sampler: SamplerConfig | None = None,
        use_ema: bool = True,
        batch_size: int = 64,
        progress: bool = False,
    ) -> torch.Tensor:
        """Images `[N, 3, H, W]` in [0, 1] for `prompts`; sample i starts from the noise of seed `seeds[i]`."""
        sampler = sampler or self.sampler
        transformer = self.ema.module if use_ema and self.ema is not None else self.transformer
        seeds = list(range(seeds, seeds + len(prompts))) if isinstance(seeds, int) else seeds
        channels = self.autoencoder.latent_channels
        null_embeds, null_mask = self.text_encoder([""])
        images = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            embeds, mask = self.text_encoder(chunk)
            noise = initial_noise(
                len(chunk), channels, self.latent_size, seeds[start : start + batch_size], self.device
            )
            latents = denoise(
                transformer, noise.to(embeds.dtype), embeds, mask, null_embeds, null_mask, sampler, progress
            )
            images.append(self.autoencoder.decode(latents).float().add(1).div(2))
        return torch.cat(images)
