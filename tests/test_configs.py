"""Every YAML under configs/ parses and instantiates against the code, so configs cannot drift."""

from pathlib import Path

import pytest
import torch

from sana_lightning.cli import SanaCLI
from sana_lightning.module import SanaFlowModule
from sana_lightning.presets import build_transformer

CONFIGS = Path(__file__).parents[1] / "configs"
OVERLAYS = {"tiny.yaml", "came8bit.yaml"}  # partial configs, stacked on base.yaml


@pytest.fixture(scope="module")
def small_source(tmp_path_factory):
    """A checkpoint of the `small` preset in sana-lightning's format, for configs that grow or prune a source."""
    path = tmp_path_factory.mktemp("source") / "small.ckpt"
    model = build_transformer("small", caption_channels=384)
    state = {f"transformer.{k}": v for k, v in model.state_dict().items()}
    torch.save({"transformer_config": dict(model.config), "state_dict": state}, path)
    return path


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_parses_against_the_code(config, small_source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(CONFIGS / "base.yaml")] * (config.name in OVERLAYS) + ["--config", str(config)]
    if "source:" in config.read_text():
        args.append(f"--model.init_args.source={small_source}")
    cli = SanaCLI(args=args, run=False)
    assert isinstance(cli.model, SanaFlowModule) and cli.trainer is not None
