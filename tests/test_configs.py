"""Every YAML under configs/ parses and instantiates against the code, so configs cannot drift."""

from pathlib import Path

import pytest
import torch
from jsonargparse import ActionConfigFile, ArgumentParser

from sana_lightning.cli import COMMANDS, SanaCLI
from sana_lightning.module import SanaFlowModule
from sana_lightning.presets import build_transformer

CONFIGS = Path(__file__).parents[1] / "configs"
OVERLAYS = {"tiny.yaml", "came8bit.yaml", "fsdp2.yaml", "precomputed.yaml"}  # partial configs, stacked on base.yaml
# Configs of data/model commands rather than of `fit`.
COMMAND_CONFIGS = {"prune.yaml": "prune", "scale.yaml": "scale", "scale_paper.yaml": "scale"}
# Need GPUs and local production models: parsed, not instantiated.
GPU_CONFIGS = {"fsdp.yaml", "grow_4.8b.yaml", "qknorm_1.6b.yaml"}


class ParseOnly(SanaCLI):
    """Checks every class path and argument against the code's signatures without building anything."""

    def instantiate_classes(self) -> None:
        pass


@pytest.fixture(scope="module")
def small_source(tmp_path_factory):
    """A checkpoint of the `small` preset in sana-lightning's format, for configs that grow or prune a source."""
    path = tmp_path_factory.mktemp("source") / "small.ckpt"
    model = build_transformer("small", caption_channels=384)
    state = {f"transformer.{k}": v for k, v in model.state_dict().items()}
    torch.save({"transformer_config": dict(model.config), "state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def small_diffusers_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pruned") / "small"
    build_transformer("small", caption_channels=384, num_layers=3).save_pretrained(path)
    return path


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("**/*.yaml")), ids=lambda p: p.name)
def test_every_config_parses_against_the_code(config, small_source, small_diffusers_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if config.name in COMMAND_CONFIGS:
        parser = ArgumentParser()
        parser.add_argument("--config", action=ActionConfigFile)
        parser.add_function_arguments(COMMANDS[COMMAND_CONFIGS[config.name]])
        parsed = parser.parse_args(["--config", str(config)])
        assert parsed.checkpoint and parsed.out_dir  # the command's required arguments come from the config
        return
    stacked = config.name in OVERLAYS or config.parent.name == "strategy"
    args = ["--config", str(CONFIGS / "base.yaml")] * stacked + ["--config", str(config)]
    if config.name in GPU_CONFIGS:
        cli = ParseOnly(args=args, run=False)
        assert cli.config.trainer.strategy.class_path.endswith(("FSDPStrategy", "FSDP2Strategy"))
        return
    text = config.read_text()
    for key, value in (("source", small_source), ("teacher", small_source), ("pruned", small_diffusers_dir)):
        if f"    {key}:" in text:
            args.append(f"--model.init_args.{key}={value}")
    cli = SanaCLI(args=args, run=False)
    assert isinstance(cli.model, SanaFlowModule) and cli.trainer is not None
