"""Data at scale: precomputed latents / caption features, aspect-ratio buckets, weighted multi-captions."""

import io
import json
import math
import random
from collections import Counter

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from sana_lightning.autoencoder import PixelAutoencoder, load_autoencoder
from sana_lightning.data.buckets import nearest_bucket, sana_buckets
from sana_lightning.data.captions import caption_weights, choose_caption
from sana_lightning.data.datamodule import ShardDataModule
from sana_lightning.data.precompute import precompute
from sana_lightning.data.shards import decode_sample, expand_shards
from sana_lightning.data.stream import ShardStream, StreamConfig
from sana_lightning.module import SanaFlowModule


def _first_batch(shards: str, **kwargs) -> dict:
    return next(iter(ShardStream(expand_shards(shards), StreamConfig(8, 32, 1, shuffle_buffer=16, seed=3, **kwargs))))


def test_precomputed_latents_equal_the_autoencoder_output(shapes_dir, tiny_dc_ae, tmp_path):
    out = precompute(f"{shapes_dir}/train-000000.tar", str(tmp_path), autoencoder=str(tiny_dc_ae), batch_size=5)
    ae = load_autoencoder(str(tiny_dc_ae))
    raw = {s["__key__"]: s for s in wds.tarfile_to_samples()([{"url": f"{shapes_dir}/train-000000.tar"}])}
    written = list(wds.tarfile_to_samples()([{"url": str(out / "train-000000.tar")}]))
    assert len(written) == len(raw) == 24
    for sample in written:
        latent = torch.from_numpy(np.load(io.BytesIO(sample["latent.npy"])))
        expected = ae.encode(decode_sample(raw[sample["__key__"]], 32)["image"][None])[0]
        assert latent.shape == (4, 16, 16)
        torch.testing.assert_close(latent, expected, rtol=1e-5, atol=1e-6)
        assert json.loads(sample["json"])["latent"]["scaling_factor"] == pytest.approx(0.41407)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shards"]["train-000000.tar"]["samples"] == 24 and manifest["latent_channels"] == 4


def test_precomputed_shards_train_like_raw_shards_without_running_the_encoders(shapes_dir, tmp_path, monkeypatch):
    out = precompute(f"{shapes_dir}/train-*.tar", str(tmp_path), encode_text=True, max_length=8)
    module = SanaFlowModule(preset="tiny", text_encoder={"max_length": 8}, caption_dropout=0.5)
    raw, pre = _first_batch(f"{shapes_dir}/train-*.tar"), _first_batch(f"{out}/train-*.tar")
    assert raw["caption"] == pre["caption"] and "image" not in pre and pre["text_embeds"].shape == (8, 8, 384)
    raw_loss = module.flow_step(raw, module.noise_generator(0))

    def must_not_run(*args):
        raise AssertionError("the autoencoder ran on precomputed latents")

    encoded, encode = [], module.text_encoder._encode
    monkeypatch.setattr(PixelAutoencoder, "encode", must_not_run)
    monkeypatch.setattr(module.text_encoder, "_encode", lambda captions: encoded.extend(captions) or encode(captions))
    module.text_encoder._cache.clear()
    pre_loss = module.flow_step(pre, module.noise_generator(0))
    assert set(encoded) == {""}  # only the empty caption of dropped samples is embedded
    torch.testing.assert_close(pre_loss, raw_loss, rtol=1e-6, atol=0)


def test_interrupted_precompute_resumes_without_redoing_finished_shards(shapes_dir, tmp_path, monkeypatch):
    calls, encode = [], PixelAutoencoder.encode

    def failing_on_the_third_shard(self, images):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return encode(self, images)

    monkeypatch.setattr(PixelAutoencoder, "encode", failing_on_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        precompute(f"{shapes_dir}/train-*.tar", str(tmp_path), batch_size=24)  # one encode call per shard of 24
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(manifest["shards"]) == ["train-000000.tar", "train-000001.tar"]
    assert not list(tmp_path.glob("*.tmp"))  # the interrupted shard left no partial file under its name
    finished = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("train-*.tar")}
    calls.clear()
    precompute(f"{shapes_dir}/train-*.tar", str(tmp_path), batch_size=24)
    assert calls == [24, 24]  # only the two unfinished shards
    assert all((tmp_path / name).stat().st_mtime_ns == mtime for name, mtime in finished.items())
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [e["samples"] for e in manifest["shards"].values()] == [24] * 4
    with pytest.raises(ValueError, match="other settings"):
        precompute(f"{shapes_dir}/train-*.tar", str(tmp_path), dtype="float16")


def test_a_shard_without_readable_samples_is_a_one_line_error(tmp_path):
    with wds.TarWriter(str(tmp_path / "bad-000000.tar")) as writer:
        writer.write({"__key__": "0", "png": b"not a png", "json": json.dumps({"caption": "x"})})
    with pytest.raises(ValueError, match="has no readable sample \\(1 skipped\\)"):
        precompute(str(tmp_path / "bad-000000.tar"), str(tmp_path / "out"))


def test_latents_of_another_autoencoder_are_a_one_line_error_naming_both(shapes_dir, tiny_dc_ae, tmp_path):
    out = precompute(f"{shapes_dir}/train-000000.tar", str(tmp_path))  # 3-channel pixel "latents"
    module = SanaFlowModule(preset="tiny", text_encoder={"max_length": 8}, autoencoder={"path": str(tiny_dc_ae)})
    batch = _first_batch(f"{out}/train-*.tar")
    with pytest.raises(ValueError, match="precomputed latents have 3 channels but the transformer takes 4"):
        module.flow_step(batch, module.noise_generator(0))


def _bucket_shards(tmp_path) -> str:
    """Images of many aspect ratios; each caption names the bucket it must land in."""
    buckets = {"wide": (16, 64), "square": (32, 32), "tall": (64, 16)}
    sizes = [(30, 100, "wide"), (40, 90, "wide"), (50, 50, "square"), (45, 60, "square"), (70, 50, "square")]
    sizes += [(100, 28, "tall"), (90, 30, "tall"), (33, 120, "wide")]
    with wds.TarWriter(str(tmp_path / "buckets-000000.tar")) as writer:
        for i, (h, w, name) in enumerate(sizes * 4):
            png = io.BytesIO()
            Image.new("RGB", (w, h), (i * 7 % 255, 0, 0)).save(png, format="PNG")
            writer.write({"__key__": f"{i:04d}", "png": png.getvalue(), "json": json.dumps({"caption": name})})
    return str(tmp_path / "buckets-000000.tar"), buckets


def test_bucketed_batches_hold_one_shape_and_every_sample_its_nearest_bucket(tmp_path, monkeypatch):
    shards, buckets = _bucket_shards(tmp_path)
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        stream = ShardStream(
            [shards], StreamConfig(4, 32, 12, shuffle_buffer=8, seed=rank, buckets=list(buckets.values()))
        )
        batches = list(stream)
        assert len(batches) == 12
        for batch in batches:
            assert batch["image"].shape[0] == 4
            assert {buckets[c] for c in batch["caption"]} == {tuple(batch["image"].shape[2:])}


def test_sana_buckets_cover_ratios_a_quarter_to_four_at_the_base_area():
    buckets = sana_buckets(1024, 32)
    ratios = [h / w for h, w in buckets]
    assert len(buckets) >= 38 and min(ratios) == 0.25 and max(ratios) == 4.0
    assert all(h % 32 == 0 and w % 32 == 0 and 0.8 < h * w / 1024**2 < 1.2 for h, w in buckets)
    assert nearest_bucket(1000, 1010, buckets) == (1024, 1024)
    assert nearest_bucket(300, 1400, buckets) == min(buckets, key=lambda b: abs(math.log(b[0] / b[1] * 1400 / 300)))


def test_weighted_caption_choice_follows_the_score_weights():
    weights = caption_weights([1.0, 2.0, 4.0], temperature=0.5)  # score^(1/T): 1, 4, 16
    assert weights == pytest.approx([1 / 21, 4 / 21, 16 / 21])
    rng = random.Random(0)
    counts = Counter(choose_caption(["a", "b", "c"], [1.0, 2.0, 4.0], "weighted", 0.5, rng) for _ in range(20000))
    for index, weight in enumerate(weights):  # 4.5 binomial standard deviations at most
        assert abs(counts[index] / 20000 - weight) < 4.5 * math.sqrt(weight * (1 - weight) / 20000)
    assert caption_weights([1.0, 2.0, 4.0], temperature=1e6) == pytest.approx([1 / 3] * 3, abs=1e-5)
    with pytest.raises(ValueError, match="one score per caption"):
        choose_caption(["a", "b"], None, "weighted", 1.0, rng)


def test_stream_picks_captions_by_their_scores(tmp_path):
    with wds.TarWriter(str(tmp_path / "captions-000000.tar")) as writer:
        png = io.BytesIO()
        Image.new("RGB", (32, 32)).save(png, format="PNG")
        record = {"captions": ["low", "high"], "caption_scores": [0.1, 0.3]}  # T=0.5: weights 1 : 9
        writer.write({"__key__": "0", "png": png.getvalue(), "json": json.dumps(record)})
    stream = ShardStream(
        [str(tmp_path / "captions-000000.tar")], StreamConfig(100, 32, 20, 1, 0, None, "weighted", 0.5)
    )
    counts = Counter(c for batch in stream for c in batch["caption"])
    assert abs(counts["high"] / 2000 - 0.9) < 0.03


def test_datamodule_reads_precomputed_shards_by_config(shapes_dir, tmp_path):
    out = precompute(f"{shapes_dir}/train-000000.tar", str(tmp_path))
    data = ShardDataModule(f"{out}/train-*.tar", batch_size=4, batches_per_epoch=2, num_workers=0)
    batch = next(iter(data.train_dataloader()))
    assert batch["latent"].shape == (4, 3, 32, 32) and "image" not in batch
