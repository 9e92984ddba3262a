import io
import json
import random
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from sana_lightning.data.datamodule import ShardDataModule
from sana_lightning.data.folder_shards import write_folder_shards
from sana_lightning.data.shapes import (
    COLORS,
    TASKS,
    SceneSampler,
    dominant_color,
    encode_png,
    render,
    write_shapes_dataset,
)
from sana_lightning.data.shards import decode_sample, expand_shards
from sana_lightning.data.stream import ShardStream, StreamConfig
from sana_lightning.eval.geneval import relative_position


def test_rendered_objects_have_exactly_their_palette_colour():
    sampler = SceneSampler(32, random.Random(0))
    for tag in TASKS:
        scene = sampler.sample(tag)
        pixels = np.asarray(render(scene.objects, 32))
        for obj in scene.objects:
            x, y = int(obj.cx), int(obj.cy + obj.size / 4)  # inside every shape, triangles included
            assert tuple(pixels[y, x]) == COLORS[obj.color], (tag, obj)


def test_scenes_follow_geneval_metadata_conventions():
    sampler = SceneSampler(32, random.Random(1))
    for _ in range(30):
        counting = sampler.sample("counting")
        n = counting.include[0]["count"]
        assert (
            2 <= n <= 4
            and len(counting.objects) == n
            and counting.exclude == [{"class": counting.include[0]["class"], "count": n + 1}]
        )
        position = sampler.sample("position")
        relation, anchor = position.include[1]["position"]
        assert anchor == 0 and relation in position.prompt
        assert relative_position(position.objects[1].box, position.objects[0].box) == {relation}
        colors = sampler.sample("colors")
        assert (
            colors.include[0]["color"] in colors.prompt
            and dominant_color(np.asarray(render(colors.objects, 32))) == colors.objects[0].color
        )


def test_shards_and_metadata_are_written(shapes_dir):
    assert len(list(shapes_dir.glob("train-*.tar"))) == 4
    records = [json.loads(line) for line in (shapes_dir / "metadata.jsonl").read_text().splitlines()]
    assert [r["tag"] for r in records] == [t for t in TASKS for _ in range(2)]
    assert all(set(r) == {"tag", "include", "exclude", "prompt"} for r in records)


def stream(urls, **kwargs) -> ShardStream:
    config = StreamConfig(**{"batch_size": 4, "image_size": 32, "batches_per_epoch": 3, **kwargs})
    return ShardStream([str(u) for u in urls], config)


def test_stream_gives_exactly_batches_per_epoch_and_is_seeded_by_epoch(shapes_dir):
    urls = sorted(shapes_dir.glob("train-*.tar"))
    first = list(stream(urls))
    assert len(first) == 3 and first[0]["image"].shape == (4, 3, 32, 32)
    assert all(len(b["caption"]) == 4 and b["skipped"] == 0 for b in first)
    again = list(stream(urls))
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, again))
    later = stream(urls)
    later.set_position(1, 0)
    assert not torch.equal(next(iter(later))["image"], first[0]["image"])


def test_every_rank_gets_the_same_number_of_full_batches_from_uneven_shards(tmp_path, monkeypatch):
    write_shapes_dataset(str(tmp_path), num_train=45, num_val=1, samples_per_shard=40)  # shards of 40 and 5
    urls = sorted(str(p) for p in tmp_path.glob("train-*.tar"))
    counts = []
    for rank in (0, 1, 2):  # 3 ranks, 2 shards: every rank still reads (all shards) and stops at the same count
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        batches = list(ShardStream(urls, StreamConfig(8, 32, 7, shuffle_buffer=8)))
        counts.append([len(b["caption"]) for b in batches])
    assert counts == [[8] * 7] * 3  # 7 batches of 8 each (56 > 45 samples: resampled), so no rank waits on another


def test_a_loader_restarted_at_any_batch_continues_the_epoch_exactly(shapes_dir):
    """Two workers interleave an epoch's batches; a loader restored at batch k delivers batches k, k+1, ... of it."""

    def datamodule() -> ShardDataModule:
        return ShardDataModule(f"{shapes_dir}/train-*.tar", batch_size=4, batches_per_epoch=5, num_workers=2)

    straight = datamodule()
    epoch = list(straight.train_dataloader())
    assert [b["position"] for b in epoch] == [[0, i] for i in range(5)]  # split 3 + 2 across the two workers
    for start in range(1, 5):
        resumed = datamodule()
        resumed.load_state_dict({"train_position": {**straight.position.state_dict(), "epoch": 0, "next": start}})
        rest = list(resumed.train_dataloader())
        assert [b["position"] for b in rest] == [[0, i] for i in range(start, 5)]
        assert all(a["key"] == b["key"] and torch.equal(a["image"], b["image"]) for a, b in zip(rest, epoch[start:]))
    straight.position.consumed(0, 4)  # the epoch's last batch reached the model: the next iter() is epoch 1
    assert [b["position"] for b in straight.train_dataloader()] == [[1, i] for i in range(5)]
    assert next(iter(straight.train_dataloader()))["key"] != epoch[0]["key"]
    with pytest.raises(ValueError, match="num_workers=2 but the config gives 5 and 1"):
        ShardDataModule(f"{shapes_dir}/train-*.tar", batch_size=4, batches_per_epoch=5, num_workers=1).load_state_dict(
            {"train_position": straight.position.state_dict()}
        )


def test_loading_in_the_training_process_gives_the_one_workers_batches_and_resumes_its_position(shapes_dir):
    """configs/base.yaml loads in the training process (`num_workers: 0`): the batches, and the saved position, of one
    loader worker, so runs and checkpoints made with one worker are continued exactly."""

    def epoch(workers: int) -> tuple[ShardDataModule, list[dict]]:
        data = ShardDataModule(f"{shapes_dir}/train-*.tar", batch_size=4, batches_per_epoch=3, num_workers=workers)
        return data, list(data.train_dataloader())

    (inline, here), (worker, there) = epoch(0), epoch(1)
    assert [b["key"] for b in here] == [b["key"] for b in there]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(here, there))
    worker.position.consumed(0, 0)
    inline.load_state_dict({"train_position": worker.position.state_dict()})
    assert [b["position"] for b in inline.train_dataloader()] == [[0, 1], [0, 2]]


def write_shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def good_sample(key: str) -> list[tuple[str, bytes]]:
    png = encode_png(Image.new("RGB", (32, 32), (255, 0, 0)))
    return [(f"{key}.png", png), (f"{key}.json", json.dumps({"captions": ["a red square"]}).encode())]


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    samples = good_sample("a") + [("b.png", b"not a png"), ("b.json", b'{"captions": ["x"]}')] + good_sample("c")
    samples += [("d.png", encode_png(Image.new("RGB", (32, 32)))), ("d.json", b"{broken json")]
    write_shard(tmp_path / "bad.tar", samples)
    batches = list(stream([tmp_path / "bad.tar"], batch_size=2, batches_per_epoch=2, shuffle_buffer=1))
    assert len(batches) == 2 and sum(b["skipped"] for b in batches) >= 2
    assert all(c == "a red square" for b in batches for c in b["caption"])


def test_truncated_shard_is_skipped_not_fatal(tmp_path, shapes_dir):
    data = (shapes_dir / "train-000000.tar").read_bytes()
    (tmp_path / "truncated.tar").write_bytes(data[: len(data) // 2 + 100])
    batches = list(stream([tmp_path / "truncated.tar"], batches_per_epoch=2))
    assert len(batches) == 2 and sum(b["skipped"] for b in batches) >= 1


def test_shards_without_any_readable_sample_raise_instead_of_hanging(tmp_path):
    write_shard(tmp_path / "junk.tar", [("a.png", b"junk"), ("a.json", b"{}")])
    with pytest.raises(RuntimeError, match="no readable sample in 1 shard"):
        list(stream([tmp_path / "junk.tar"], batches_per_epoch=1))


def test_missing_and_empty_shards_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shard matches .*python -m sana_lightning.cli shapes"):
        expand_shards(str(tmp_path / "train-*.tar"))
    write_shard(tmp_path / "empty.tar", [])
    with pytest.raises(ValueError, match="holds no samples"):
        expand_shards(str(tmp_path / "empty.tar"))
    (tmp_path / "zero.tar").write_bytes(b"")
    with pytest.raises(ValueError, match="is not a readable tar file"):
        expand_shards(str(tmp_path / "zero.tar"))


def test_brace_patterns_expand(shapes_dir):
    urls = expand_shards(f"{shapes_dir}/train-{{000000..000002}}.tar")
    assert [u.rsplit("/", 1)[1] for u in urls] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]


def test_decode_resizes_and_centre_crops_to_the_training_size():
    image = Image.new("RGB", (64, 32), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 8, 32))  # white left eighth is cropped away
    decoded = decode_sample({"__key__": "k", "png": encode_png(image), "txt": b"one\ntwo"}, 16)
    pixels, captions = decoded["image"], decoded["captions"]
    assert pixels.shape == (3, 16, 16) and captions == ["one", "two"] and decoded["scores"] is None
    assert pixels.max() < -0.9  # all black after the centre crop


def test_image_folder_to_shards(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for name, caption_file, text in [
        ("a", "a.txt", "first\nsecond"),
        ("sub/b", "sub/b.json", '{"caption": "bee"}'),
        ("c", None, None),
    ]:
        Image.new("RGB", (40, 30), (0, 128, 0)).save(folder / f"{name}.jpg")
        if caption_file:
            (folder / caption_file).write_text(text)
    shards = write_folder_shards(str(folder), str(tmp_path / "shards"))
    batch = next(iter(stream(shards, batch_size=8, batches_per_epoch=1)))
    assert set(batch["caption"]) <= {"first", "second", "bee"} and batch["image"].shape == (8, 3, 32, 32)
    (folder / "c.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"c.json: not valid JSON .*fix or delete the file"):
        write_folder_shards(str(folder), str(tmp_path / "again"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_folder_shards(str(tmp_path / "nowhere"), str(tmp_path / "x"))
