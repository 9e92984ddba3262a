"""diffusers interop: a trained, grown or pruned model as a `SanaTransformer2DModel` or a whole `SanaPipeline`."""

import json
from pathlib import Path

from sana_lightning.atomic import atomic_directory, tensor_bytes
from sana_lightning.autoencoder import DCAutoencoder
from sana_lightning.module import SanaFlowModule
from sana_lightning.sampling import make_scheduler


def export_diffusers(checkpoint: str, out_dir: str, weights: str = "ema", pipeline: bool | None = None) -> Path:
    """Write `checkpoint`'s transformer (`weights`: ema or raw) with `save_pretrained`: as a `SanaPipeline`
    directory (tokenizer, text encoder, DC-AE, transformer, the sampler's scheduler) when the model was trained with
    a diffusers autoencoder, else the transformer alone. `pipeline_call.json` holds the `SanaPipeline` call
    arguments the model was trained for (caption length, prompt prefix, steps, guidance, and the training resolution
    without diffusers' resolution binning). The directory is written beside `out_dir` and renamed into place, so a
    failed export leaves an existing `out_dir` as it was.

    Args:
        checkpoint: A sana-lightning checkpoint (a glob picks the newest).
        out_dir: The diffusers directory to write.
        weights: ema (falls back to the trained weights) or raw.
        pipeline: Write a whole SanaPipeline (default: when the model has a diffusers autoencoder).
    """
    module = SanaFlowModule.from_checkpoint(checkpoint, weights)
    latent_space = isinstance(module.autoencoder, DCAutoencoder)
    if pipeline and not latent_space:
        raise ValueError(
            "a SanaPipeline needs a diffusers autoencoder but this model denoises pixels (autoencoder.path empty): "
            "export the transformer alone (pipeline: false)"
        )
    out = Path(out_dir)
    settings = {k: module.hparams[k] for k in SanaFlowModule.SETTINGS}
    if pipeline is False or not latent_space:
        with atomic_directory(out, tensor_bytes(module.transformer)) as staging:
            module.transformer.save_pretrained(staging)
            (staging / "sana_lightning.json").write_text(json.dumps(settings, indent=2))  # read by from_checkpoint
        print(f"exported the transformer ({weights} weights) to {out} (pixel space: no SanaPipeline)")
        return out
    from diffusers import SanaPipeline

    encoder, sampler = module.text_encoder, module.sampler
    pipe = SanaPipeline(
        tokenizer=encoder.tokenizer,
        text_encoder=encoder.model,
        vae=module.autoencoder.vae,
        transformer=module.transformer,
        scheduler=make_scheduler(sampler),
    )
    image_size = module.hparams.image_size
    call = {
        "height": image_size,
        "width": image_size,
        "use_resolution_binning": False,  # binning maps sizes to Sana's 512-4096 px tables: not what was trained
        "max_sequence_length": encoder.max_length,
        "complex_human_instruction": [encoder.complex_human_instruction] if encoder.complex_human_instruction else None,
        "num_inference_steps": sampler.steps,
        "guidance_scale": sampler.guidance_scale,
    }
    with atomic_directory(out, tensor_bytes(pipe.components)) as staging:
        pipe.save_pretrained(staging)
        (staging / "pipeline_call.json").write_text(json.dumps(call, indent=2))
        (staging / "sana_lightning.json").write_text(json.dumps(settings, indent=2))
    print(f"exported a SanaPipeline ({weights} weights) to {out}; call it with the arguments in pipeline_call.json")
    return out
