"""The `train-verifier` command: a CLIP or a small VLM trained on rendered Shapes scenes to judge "does this image
match the prompt?", saved with `save_pretrained` so `CLIPJudge` / `VLMJudge` load it from its path like a download.
Their image tower is a ConvNeXt (the CLIP a `VisionTextDualEncoderModel`, the VLM a FastVLM) or a ViT (`CLIPModel`,
Llava).

The CLIP learns a pairwise logistic loss on the cosine of every image with every caption of its batch (each image's
true caption and hard negative), labelled exactly by GenEval's rules on the scenes' objects (a caption can be true of
several images). The VLM learns the cross-entropy of the first answer token, "yes" or "no", after `VLMJudge`'s own
inputs (its question, chat template and left padding), so the judge reads the verdict it was trained to give.
Held-out accuracy comes from the saved model through the judge itself.
"""

import itertools
import json
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from sana_lightning.data.shapes import COLORS, NUMBERS, PLURALS, RELATIONS, SHAPES
from sana_lightning.inference_scaling.judges import VERIFIER_RECORD, CLIPJudge, VLMJudge
from sana_lightning.inference_scaling.verifier_data import PREFIXES, evaluation_prompts, examples, holds
from sana_lightning.inference_scaling.verifier_evaluation import best_threshold, held_out_report, rivals
from sana_lightning.inference_scaling.verifier_models import (
    build_clip,
    build_fast_vlm,
    build_llava,
    clip_tokenizer,
    convnext_config,
    minilm_tokenizer,
)

DEFAULTS = {
    ("clip", "convnext"): {"steps": 2400, "batch_size": 32, "lr": 1e-3, "patch_size": 2},
    ("clip", "vit"): {"steps": 1200, "batch_size": 32, "lr": 1e-3, "patch_size": 4},
    ("vlm", "convnext"): {"steps": 900, "batch_size": 16, "lr": 3e-3, "patch_size": 2},
    ("vlm", "vit"): {"steps": 900, "batch_size": 16, "lr": 3e-3, "patch_size": 8},
}
"""Per kind and image tower: settings measured on this CPU (README "Trained Shapes verifiers")."""


CLIP_TYPES = ("clip", "vision-text-dual-encoder")
"""The `model_type`s `train-verifier clip` saves (ViT and ConvNeXt image towers)."""


def domain_words() -> list[str]:
    """Every word a verifier caption can use."""
    words = {w for phrase in (*PREFIXES, "and", *RELATIONS) for w in phrase.split()}
    return sorted(words | set(COLORS) | set(SHAPES) | set(PLURALS.values()) | set(NUMBERS.values()))


def pretrained_clip(path: str):
    """The CLIP verifier `train-verifier clip` saved at `path` (a VLM's vision tower): a `CLIPModel` or a
    `VisionTextDualEncoderModel`."""
    from transformers import AutoModel

    config = Path(path) / "config.json"
    if not config.is_file() or json.loads(config.read_text()).get("model_type") not in CLIP_TYPES:
        raise ValueError(f"vision tower '{path}' is not a saved CLIP: train one with `train-verifier clip {path}`")
    return AutoModel.from_pretrained(path)


def clip_loss(model, bias: torch.Tensor, processor, batch) -> dict[str, torch.Tensor]:
    """Pairwise logistic loss of every image (and near miss) against every distinct caption of the batch, labels
    exact."""
    texts = list(dict.fromkeys(c.text for e in batch for c in (e.positive, e.negative)))
    captions = {c.text: c for e in batch for c in (e.positive, e.negative)}
    scenes = [scene for e in batch for scene in (e.scene, e.near_miss)]
    labels = torch.tensor([[float(holds(captions[t], scene)) for t in texts] for scene in scenes])
    images = [image for e in batch for image in (e.image, e.near_miss_image)]
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    outputs = model(**inputs)
    image = F.normalize(outputs.image_embeds, dim=-1)
    text = F.normalize(outputs.text_embeds, dim=-1)
    logits = image @ text.T * model.logit_scale.exp() + bias
    return {"pairs": F.binary_cross_entropy_with_logits(logits, labels)}


def caption_span(ids: list[int], caption: list[int]) -> int:
    """Where the caption's tokens start in a sequence (its last occurrence)."""
    for start in range(len(ids) - len(caption), -1, -1):
        if ids[start : start + len(caption)] == caption:
            return start
    raise ValueError("the caption's tokens are not in the judge's input: its tokenizer splits them differently there")


JUDGED_TRUTH = (True, False, False)
"""The truth of an example's `judged_pairs`."""


def judged_pairs(example) -> list[tuple[str, Image.Image]]:
    """The example's image with its true caption and its hard negative, then its near miss with the true caption."""
    positive, image = example.positive.text, example.image
    return [(positive, image), (example.negative.text, image), (positive, example.near_miss_image)]


def vlm_pairs(batch) -> tuple[list[tuple[str, Image.Image]], list[bool]]:
    """(caption, image) pairs and their truth: every image with its true caption and its hard negative, its near
    miss with the true caption, and every other image with the next one's true caption when that is false of it (an
    easy negative)."""
    pairs = [pair for e in batch for pair in judged_pairs(e)]
    truth = list(JUDGED_TRUTH) * len(batch)
    for example, other in zip(batch[::2], batch[1::2]):
        if not holds(other.positive, example.scene):
            pairs.append((other.positive.text, example.image))
            truth.append(False)
    return pairs, truth


def vlm_loss(judge, pairs, truth: list[bool], caption_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Cross-entropy of the answer, "yes" when the caption is true (the summed probability of its spellings), at the
    position the judge generates from (positions as `generate` numbers left-padded prompts); plus `caption_weight`
    x the next-token cross-entropy of the true captions' words inside the question (captioning: the words must be
    read off the image, which grounds the answer)."""
    inputs = judge.inputs(pairs)
    positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    hidden = judge.model.model(**inputs, position_ids=positions).last_hidden_state
    logits = judge.model.lm_head(hidden[:, -1])
    spelled = {answer: logits[:, ids].logsumexp(-1) for answer, ids in judge.answer_ids.items()}
    right = torch.where(torch.tensor(truth), spelled["yes"], spelled["no"])
    losses = {"answer": (logits.logsumexp(-1) - right).mean()}
    if caption_weight:
        rows, columns, targets = [], [], []
        for row in (i for i, true in enumerate(truth) if true):
            ids = inputs["input_ids"][row].tolist()
            caption = judge.processor.tokenizer(pairs[row][0], add_special_tokens=False).input_ids
            start = caption_span(ids, caption)
            rows += [row] * len(caption)
            columns += range(start - 1, start + len(caption) - 1)
            targets += caption
        caption_logits = judge.model.lm_head(hidden[rows, columns])
        losses["caption"] = caption_weight * F.cross_entropy(caption_logits, torch.tensor(targets))
    return losses


def new_vlm(tower: str, clip, width: int, layers: int, heads: int, image_size: int, patch_size: int, seed: int):
    """The VLM to train: a FastVLM on a ConvNeXt tower or a Llava on a ViT (seeing its CLS token too), with the
    trained `clip`'s vision tower when one is given."""
    sizes = dict(text_width=width, text_layers=layers, heads=heads, image_size=image_size, seed=seed)
    sizes["init_std"] = width**-0.5  # not 0.02: at width 64 attention starts too flat to learn to read the image
    if tower == "convnext":
        vision = (
            clip.config.vision_config if clip is not None else convnext_config(width, layers, patch_size, image_size)
        )
        model, processor = build_fast_vlm(minilm_tokenizer(), vision, **sizes)
    else:
        model, processor = build_llava(
            minilm_tokenizer(), width, layers, patch_size=patch_size, features="full", **sizes
        )
    if clip is not None:
        model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    return model, processor


def train_verifier(
    kind: Literal["clip", "vlm"],
    out_dir: str,
    eval_metadata: list[str] | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    width: int = 64,
    layers: int = 2,
    heads: int = 4,
    patch_size: int | None = None,
    image_size: int = 32,
    tower: Literal["convnext", "vit"] = "convnext",
    held_out: int = 1200,
    seed: int = 0,
    held_out_seed: int = 1,
    caption_weight: float = 1.0,
    vision_tower: str | None = None,
    threads: int | None = None,
) -> dict:
    """Train a Shapes verifier (a CLIP or a small Llava VLM) and save it to `out_dir` with its processor and
    `verifier.json` (held-out accuracies, CLIP's threshold, seeds, steps, excluded evaluation prompts).

    Args:
        kind: clip (contrastive image-text) or vlm (answers "yes"/"no" to SANA's verifier question).
        out_dir: The model directory (replaced once training succeeds).
        eval_metadata: GenEval metadata files whose prompts are never training captions
            (default: data/shapes/metadata.jsonl).
        steps: Optimizer steps (AdamW; default: clip 2400 with a ConvNeXt tower, 1200 with a ViT; vlm 900).
        batch_size: Scenes a step, each an image with its true caption and a hard negative, and its near miss (default:
            clip 32, vlm 16).
        lr: Peak learning rate, warm-up then cosine decay (default: clip 1e-3, vlm 3e-3).
        width: Hidden width of every tower (a ConvNeXt's first stage; its next two are 2x and 4x as wide).
        layers: Layers of every tower (blocks a ConvNeXt stage).
        heads: Attention heads of every transformer.
        patch_size: Vision patch size in pixels (default: ConvNeXt 2; ViT: clip 4, vlm 8).
        image_size: Rendered image side (the generator's).
        tower: The image tower: convnext (clip: a `VisionTextDualEncoderModel`, vlm: a FastVLM) or vit (clip: a
            `CLIPModel`, vlm: a Llava).
        held_out: Held-out images (each judged with its GenEval prompt and a hard negative).
        seed: Seeds the initial weights and the training scenes.
        held_out_seed: Seeds the held-out scenes (must differ from seed).
        caption_weight: vlm: weight of the captioning loss (the true caption's words, read off the image).
        vision_tower: vlm: a trained CLIP verifier's directory; its vision tower becomes the VLM's, frozen (LLaVA's
            recipe; its tower kind and sizes, and its text tower's width, layers and heads, replace those given).
        threads: torch CPU threads (default: torch's).
    """
    from sana_lightning.atomic import atomic_directory

    if kind not in ("clip", "vlm"):
        raise ValueError(f"unknown verifier kind '{kind}': use clip or vlm")
    if tower not in ("convnext", "vit"):
        raise ValueError(f"unknown image tower '{tower}': use convnext or vit")
    clip = pretrained_clip(vision_tower) if kind == "vlm" and vision_tower else None
    if clip is not None:  # LLaVA's recipe: the CLIP's tower kind and sizes
        tower = "convnext" if clip.config.vision_config.model_type == "convnext" else "vit"
        text = clip.config.text_config
        width, layers, heads = text.hidden_size, text.num_hidden_layers, text.num_attention_heads
        image_size, patch_size = clip.config.vision_config.image_size, clip.config.vision_config.patch_size
    defaults = DEFAULTS[kind, tower]
    steps, batch_size = steps or defaults["steps"], batch_size or defaults["batch_size"]
    lr, patch_size = lr or defaults["lr"], patch_size or defaults["patch_size"]
    if held_out_seed == seed:
        raise ValueError(f"held_out_seed {held_out_seed} equals seed: give the held-out scenes another seed")
    if threads:
        torch.set_num_threads(threads)
    excluded = evaluation_prompts(eval_metadata or ["data/shapes/metadata.jsonl"])
    stream = examples(seed, image_size, exclude=excluded)
    held = list(itertools.islice(examples(held_out_seed, image_size, held_out=True), held_out))
    with atomic_directory(out_dir) as staging:
        if kind == "clip":
            tokenizer = clip_tokenizer(domain_words())
            model, processor = build_clip(
                tokenizer, width, layers, heads, width, image_size, patch_size, max_length=32, seed=seed, tower=tower
            )
            bias = torch.nn.Parameter(torch.tensor(-4.0))
            parameters = [*model.parameters(), bias]
            loss_of = lambda batch: clip_loss(model, bias, processor, batch)  # noqa: E731
        else:
            model, processor = new_vlm(tower, clip, width, layers, heads, image_size, patch_size, seed)
            model.save_pretrained(staging)
            processor.save_pretrained(staging)
            judge = VLMJudge(str(staging))  # trains the judge's own model, on the judge's own inputs
            model = judge.model
            model.model.vision_tower.requires_grad_(clip is None)
            parameters = [p for p in model.parameters() if p.requires_grad]
            loss_of = lambda batch: vlm_loss(judge, *vlm_pairs(batch), caption_weight)  # noqa: E731
        optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
        warmup = max(1, steps // 20)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item()),
        )
        model.train()
        start, history = time.perf_counter(), defaultdict(list)
        bar = tqdm(range(steps), desc=f"train-verifier {kind}", unit="step")
        for _ in bar:
            losses = loss_of(list(itertools.islice(stream, batch_size)))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()
            for name, loss in losses.items():
                history[name].append(loss.item())
            recent = {name: sum(values[-20:]) / len(values[-20:]) for name, values in history.items()}
            bar.set_postfix({name: f"{value:.4f}" for name, value in recent.items()})
        seconds = time.perf_counter() - start
        model.eval()
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        pairs = [pair for e in held for pair in judged_pairs(e)]
        rival_pairs = rivals(held)
        pairs += [(held[i].positive.text, held[j].image) for i, j in rival_pairs]
        judge = CLIPJudge(str(staging)) if kind == "clip" else VLMJudge(str(staging), batch_size=64)
        verdicts, threshold, judged = judge.judge_pairs(pairs), None, len(JUDGED_TRUTH) * len(held)
        if kind == "clip":
            threshold = best_threshold([v.p_yes for v in verdicts[:judged]], list(JUDGED_TRUTH) * len(held))
            verdicts = [replace(v, yes=v.p_yes >= threshold) for v in verdicts]
        report = held_out_report(held, verdicts[:judged], rival_pairs, verdicts[judged:])
        summary = {
            "kind": kind,
            "held_out": report,
            "threshold": threshold,
            "steps": steps,
            "batch_size": batch_size,
            "train_seconds": round(seconds, 1),
            "threads": torch.get_num_threads(),
            "final_losses": {name: round(value, 4) for name, value in recent.items()},
            "seed": seed,
            "vision_tower": vision_tower,
            "tower": tower,
            "held_out_seed": held_out_seed,
            "evaluation_prompts_excluded": len(excluded),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        (Path(staging) / VERIFIER_RECORD).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["held_out"], indent=2))
    return summary
