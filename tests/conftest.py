import lightning as L
import pytest
import torch
from tiny_models import save_tiny_detr, save_tiny_llava

from sana_lightning.data.datamodule import ShardDataModule
from sana_lightning.data.shapes import write_shapes_dataset
from sana_lightning.inference_scaling.verifier_models import build_clip, clip_tokenizer, minilm_tokenizer
from sana_lightning.module import SanaFlowModule
from sana_lightning.text_encoder import TextEncoderConfig


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """A small Shapes dataset: 4 train shards of 24, one val shard, 2 evaluation prompts per task."""
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(str(root), num_train=96, num_val=16, samples_per_shard=24, eval_prompts_per_task=2)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, shapes_dir):
    """A 4-block tiny model trained for 2 steps and saved by Lightning."""
    path = tmp_path_factory.mktemp("trained") / "model.ckpt"
    L.seed_everything(0)
    module = SanaFlowModule(preset="tiny", transformer={"num_layers": 4}, text_encoder=TextEncoderConfig(max_length=8))
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False
    )
    trainer.fit(module, ShardDataModule(f"{shapes_dir}/train-*.tar", batch_size=4, batches_per_epoch=2, num_workers=0))
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def tiny_dc_ae(tmp_path_factory):
    """A randomly initialised 2x-downsampling DC-AE with 4 latent channels, saved as a diffusers directory."""
    from diffusers import AutoencoderDC

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dc-ae") / "dc-ae"
    AutoencoderDC(
        latent_channels=4,
        attention_head_dim=8,
        encoder_block_types="ResBlock",
        decoder_block_types="ResBlock",
        encoder_block_out_channels=(8, 16),
        decoder_block_out_channels=(8, 16),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        encoder_qkv_multiscales=((), ()),
        decoder_qkv_multiscales=((), ()),
        scaling_factor=0.41407,
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_detector_and_clip(tmp_path_factory):
    """A randomly initialised DETR (Shapes labels) and CLIP (character-level tokenizer), with processors, saved."""
    root = tmp_path_factory.mktemp("models")
    save_tiny_detr(root / "detr", {0: "circle", 1: "square", 2: "triangle"})
    model, processor = build_clip(clip_tokenizer())
    model.save_pretrained(root / "clip")
    processor.save_pretrained(root / "clip")
    return root / "detr", root / "clip"


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    """A randomly initialised tiny Llava (CLIP vision + Llama text) with processor and chat template, saved."""
    return save_tiny_llava(tmp_path_factory.mktemp("vlm"), minilm_tokenizer())


@pytest.fixture(autouse=True)
def _single_thread_determinism():
    torch.manual_seed(0)
    yield
