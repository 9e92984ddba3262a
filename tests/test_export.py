"""diffusers interop: exported models load with `from_pretrained` and compute what ours compute."""

import json

import lightning as L
import pytest
import torch
from diffusers import AutoencoderDC, SanaPipeline, SanaTransformer2DModel
from transformers import AutoTokenizer, BertConfig, BertModel

from sana_lightning.cli import main
from sana_lightning.data.datamodule import ShardDataModule
from sana_lightning.module import SanaFlowModule
from sana_lightning.text_encoder import embedded_text_encoder_path


def _same_outputs(ours: SanaTransformer2DModel, theirs: SanaTransformer2DModel) -> None:
    generator = torch.Generator().manual_seed(0)
    config = ours.config
    latents = torch.randn(2, config.in_channels, 8, 8, generator=generator)
    text = torch.randn(2, 5, config.caption_channels, generator=generator)
    timestep = torch.tensor([10.0, 700.0])
    with torch.no_grad():
        expected = ours(latents, encoder_hidden_states=text, timestep=timestep).sample
        assert torch.equal(theirs(latents, encoder_hidden_states=text, timestep=timestep).sample, expected)


def test_exported_transformer_loads_with_from_pretrained_and_gives_identical_outputs(tiny_checkpoint, tmp_path):
    main(["export", str(tiny_checkpoint), str(tmp_path / "out"), "--weights", "raw"])
    exported = SanaTransformer2DModel.from_pretrained(tmp_path / "out").eval()
    ours = SanaFlowModule.from_checkpoint(str(tiny_checkpoint), "raw").transformer
    _same_outputs(ours, exported)
    with pytest.raises(ValueError, match="export the transformer alone"):
        main(["export", str(tiny_checkpoint), str(tmp_path / "pipe"), "--pipeline", "true"])


@pytest.fixture(scope="module")
def dc_ae_checkpoint(tmp_path_factory, tiny_dc_ae, shapes_dir):
    """A tiny model trained one step in the latent space of the tiny DC-AE."""
    path = tmp_path_factory.mktemp("latent") / "model.ckpt"
    L.seed_everything(0)
    module = SanaFlowModule(
        preset="tiny", text_encoder={"max_length": 8}, autoencoder={"path": str(tiny_dc_ae)}, sampler={"steps": 2}
    )
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.fit(module, ShardDataModule(f"{shapes_dir}/train-*.tar", batch_size=2, batches_per_epoch=1, num_workers=0))
    trainer.save_checkpoint(path)
    return path


def test_exported_sana_pipeline_generates_images_of_the_right_shape(dc_ae_checkpoint, tmp_path):
    out = tmp_path / "pipeline"
    main(["export", str(dc_ae_checkpoint), str(out)])
    pipe = SanaPipeline.from_pretrained(out)
    _same_outputs(SanaFlowModule.from_checkpoint(str(dc_ae_checkpoint)).transformer, pipe.transformer)
    call = json.loads((out / "pipeline_call.json").read_text())
    assert call["max_sequence_length"] == 8 and call["complex_human_instruction"] is None
    assert call["height"] == call["width"] == 32 and call["use_resolution_binning"] is False
    images = pipe(
        ["a photo of a red circle", "a photo of two blue squares"],
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        **call,
    ).images
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0 and images.max() <= 1


def _tiny_dc_ae(levels: int) -> AutoencoderDC:
    """A random DC-AE as conftest's `tiny_dc_ae`, with `levels` block levels: 2 ** (levels - 1) x downsampling."""
    channels, layers, multiscales = (8,) + (16,) * (levels - 1), (1,) * levels, ((),) * levels
    return AutoencoderDC(
        latent_channels=4,
        attention_head_dim=8,
        encoder_block_types="ResBlock",
        decoder_block_types="ResBlock",
        encoder_block_out_channels=channels,
        decoder_block_out_channels=channels,
        encoder_layers_per_block=layers,
        decoder_layers_per_block=layers,
        encoder_qkv_multiscales=multiscales,
        decoder_qkv_multiscales=multiscales,
        scaling_factor=0.41407,
    )


@pytest.mark.parametrize("levels", [3, 4], ids=["4x", "8x"])
def test_exported_pipeline_called_as_the_readme_says_draws_the_image_generate_draws(levels, tmp_path):
    torch.manual_seed(0)
    _tiny_dc_ae(levels).save_pretrained(tmp_path / "dc-ae")
    module = SanaFlowModule(
        preset="tiny",
        text_encoder={"max_length": 8},
        autoencoder={"path": str(tmp_path / "dc-ae")},
        sampler={"steps": 2},
        ema_decay=None,
    )
    checkpoint = tmp_path / "model.ckpt"  # random weights, in the layout Lightning saves
    torch.save(
        {
            "hyper_parameters": dict(module.hparams),
            "transformer_config": dict(module.transformer.config),
            "state_dict": module.state_dict(),
        },
        checkpoint,
    )
    main(["export", str(checkpoint), str(tmp_path / "exported")])

    # The README's call, with a seed and tensors out.
    pipe = SanaPipeline.from_pretrained(tmp_path / "exported")
    call = json.load(open(tmp_path / "exported" / "pipeline_call.json"))
    prompt = "a photo of a red circle"
    image = pipe(prompt, generator=torch.Generator().manual_seed(7), output_type="pt", **call).images[0]

    expected = SanaFlowModule.from_checkpoint(str(checkpoint)).generate([prompt], seeds=[7])[0]
    assert image.shape == expected.shape == (3, 32, 32) and expected.std() > 0.01
    assert (image - expected).abs().max() < 1e-4
    assert pipe(prompt, **call).images[0].size == (32, 32)  # the README's PIL image


def test_diffusers_directories_are_growth_sources_and_pruning_inputs(tiny_checkpoint, shapes_dir, tmp_path):
    main(["export", str(tiny_checkpoint), str(tmp_path / "exported")])
    main(["grow", str(tmp_path / "exported"), str(tmp_path / "grown"), "6"])
    assert SanaTransformer2DModel.from_pretrained(tmp_path / "grown").config.num_layers == 6
    shards = f"--shards={shapes_dir}/val-*.tar"
    main(["prune", str(tmp_path / "exported"), str(tmp_path / "pruned"), "2", shards, "--batch_size=4"])
    assert SanaTransformer2DModel.from_pretrained(tmp_path / "pruned").config.num_layers == 2
    foreign = tmp_path / "foreign"  # a diffusers transformer without our settings: the encoders are given
    SanaTransformer2DModel.from_pretrained(tmp_path / "exported").save_pretrained(foreign)
    narrow = tmp_path / "narrow-encoder"  # a 32-wide BERT: not the encoder this transformer was trained with
    tokenizer = AutoTokenizer.from_pretrained(embedded_text_encoder_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    BertModel(config).save_pretrained(narrow)
    tokenizer.save_pretrained(narrow)
    with pytest.raises(ValueError, match="caption_channels=384 but the text encoder / autoencoder give 32"):
        main(["prune", str(foreign), str(tmp_path / "p2"), "2", shards, "--text_encoder", str(narrow)])
    main(["prune", str(foreign), str(tmp_path / "p3"), "2", shards, "--batch_size=4", "--image_size=32"])
