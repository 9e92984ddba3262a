"""Judges of "does this image match the prompt?": a VLM verifier (yes/no probabilities), CLIP, the GenEval oracle."""

import json
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from sana_lightning.eval.geneval import Detector, score_images
from sana_lightning.inference_scaling.tournament import Verdict
from sana_lightning.local_paths import local_model_dir

VERIFIER_RECORD = "verifier.json"
"""What `train-verifier` saves beside a model it trained: held-out accuracies, CLIP's threshold, seeds, steps."""


class Judge(Protocol):
    def judge_pairs(self, pairs: list[tuple[str, Image.Image]]) -> list[Verdict]:
        """One verdict per (prompt, image) pair, the pairs judged in batches."""

    def judge(self, images: list[Image.Image], prompt: str) -> list[Verdict]:
        """One verdict per image of one prompt: `judge_pairs` of (prompt, image)."""


class PairJudge:
    """The judges' shared `judge`: a thin wrapper over their `judge_pairs`."""

    def judge(self, images: list[Image.Image], prompt: str) -> list[Verdict]:
        return self.judge_pairs([(prompt, image) for image in images])

    def judge_pairs(self, pairs: list[tuple[str, Image.Image]]) -> list[Verdict]:
        raise NotImplementedError


class VLMJudge(PairJudge):
    """A vision-language verifier from a local path, asked SANA 1.5's yes/no question about each image.

    SANA 1.5's judge is NVILA-Lite-2B-Verifier, trained on `OFFICIAL_PROMPT` (the default; `question` replaces it,
    with `{prompt}` where the image's prompt goes). Like SANA's `nvila_sana_pick.py`, the verdict comes from the
    scores of the first generated token (`generate(max_new_tokens=1, output_scores=True)`, greedy): `p_yes` / `p_no`
    are that token's full-vocabulary softmax probabilities summed over the single-token spellings of "yes" / "no"
    (any case, with or without a leading space), and the answer is "yes" when `p_yes > p_no`. The tournament then
    compares two "yes" by `p_yes` and two "no" by `p_no` (`tournament.beats`).

    Built-in transformers models load as they are. A verifier with its own modeling code (`auto_map` in its
    `config.json`, as NVILA's) runs that code only with `trust_remote_code=True`: off by default, since it executes
    Python from the model directory. Images are judged `batch_size` at a time, left-padded, in one `generate` each.
    """

    OFFICIAL_PROMPT = (
        "You are an AI assistant specializing in image analysis and ranking. Your task is to analyze and compare "
        "image based on how well they match the given prompt. The given prompt is:{prompt}. Please consider the "
        "prompt and the image to make a decision and response directly with 'yes' or 'no'."
    )
    ANSWERS = {"yes": ("yes", "Yes", "YES"), "no": ("no", "No", "NO")}
    MODEL_CLASSES = ("AutoModelForImageTextToText", "AutoModelForCausalLM", "AutoModel")
    """Tried in order: built-in VLMs register as the first, custom-code verifiers often as the others."""

    def __init__(
        self,
        path: str,
        question: str = OFFICIAL_PROMPT,
        trust_remote_code: bool = False,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 8,
    ) -> None:
        import transformers

        local_model_dir(path, "VLM judge path", "set judge_path to a local transformers vision-language model")
        if "{prompt}" not in question:
            raise ValueError(f"the VLM judge's question {question!r} has no {{prompt}}: put it where the prompt goes")
        config = json.loads((Path(path) / "config.json").read_text()) if (Path(path) / "config.json").exists() else {}
        custom = "auto_map" in config and config.get("model_type") not in transformers.CONFIG_MAPPING
        if custom and not trust_remote_code:
            raise ValueError(
                f"VLM judge '{path}' is a custom-code model (model_type {config.get('model_type')!r}, auto_map in "
                "config.json): add --trust_remote_code true to run its code (off by default; only for code you trust)"
            )
        self.question, self.device, self.batch_size = question, device, batch_size
        self.dtype = getattr(torch, dtype)
        self.processor = transformers.AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model, failures = None, []
        for name in self.MODEL_CLASSES:
            try:
                model = getattr(transformers, name).from_pretrained(
                    path, trust_remote_code=trust_remote_code, dtype=self.dtype
                )
            except ValueError as error:  # "Unrecognized configuration class ... for this kind of AutoModel"
                failures.append(f"{name}: {str(error).splitlines()[0][:160]}")
                continue
            if model.can_generate():
                self.model = model.to(device).eval()
                break
            failures.append(f"{name}: {type(model).__name__} has no language-model head")
        if self.model is None:
            raise ValueError(f"VLM judge '{path}' loads as no generative model ({'; '.join(failures)})")
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"  # generation continues every prompt from its last position
        self.answer_ids = {answer: self._token_ids(tokenizer, words) for answer, words in self.ANSWERS.items()}
        if not all(self.answer_ids.values()) or set(self.answer_ids["yes"]) & set(self.answer_ids["no"]):
            raise ValueError(f"VLM judge '{path}': its tokenizer has no single tokens for both 'yes' and 'no'")

    @staticmethod
    def _token_ids(tokenizer, words: tuple[str, ...]) -> list[int]:
        """Ids of every single-token spelling of `words`, bare and with a leading space (as encoded, and as the
        vocabulary's own `Ġ` / `▁` space markers)."""
        vocabulary, ids = tokenizer.get_vocab(), set()
        for word in words:
            for text in (word, " " + word):
                encoded = tokenizer(text, add_special_tokens=False).input_ids
                if len(encoded) == 1:
                    ids.add(encoded[0])
            ids.update(vocabulary[token] for token in (word, "Ġ" + word, "▁" + word) if token in vocabulary)
        return sorted(ids)

    @torch.no_grad()
    def judge_pairs(self, pairs: list[tuple[str, Image.Image]]) -> list[Verdict]:
        """One verdict per (prompt, image), `batch_size` pairs a forward."""
        verdicts = []
        for start in range(0, len(pairs), self.batch_size):
            verdicts += self._judge_batch(pairs[start : start + self.batch_size])
        return verdicts

    def inputs(self, pairs: list[tuple[str, Image.Image]]) -> dict:
        """The model inputs of a left-padded batch: chat template with the image, then the question."""
        texts = [
            self.processor.apply_chat_template(
                [
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "text", "text": self.question.format(prompt=prompt)}],
                    }
                ],
                add_generation_prompt=True,
            )
            for prompt, _ in pairs
        ]
        batch = self.processor(images=[image for _, image in pairs], text=texts, padding=True, return_tensors="pt")
        return {
            k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device) for k, v in batch.items()
        }

    def first_token_scores(self, pairs: list[tuple[str, Image.Image]]) -> torch.Tensor:
        """`[B, vocab]` scores of the first generated token, greedy, as SANA's verifier code reads them."""
        output = self.model.generate(
            **self.inputs(pairs), max_new_tokens=1, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
        return output.scores[0].float()

    def _judge_batch(self, pairs: list[tuple[str, Image.Image]]) -> list[Verdict]:
        log_probs = torch.log_softmax(self.first_token_scores(pairs), dim=-1)
        p_yes, p_no = (log_probs[:, self.answer_ids[a]].logsumexp(-1).exp().tolist() for a in ("yes", "no"))
        return [Verdict(y > n, y, n) for y, n in zip(p_yes, p_no)]


class CLIPJudge(PairJudge):
    """Image-text cosine similarity of a transformers CLIP from a local path; "yes" at or above `threshold` (default:
    the one in the model's `verifier.json`, written by `train-verifier`, else 0.25). Pairs are judged `batch_size` at
    a time, each batch's images and distinct prompts in one CLIP forward."""

    def __init__(self, path: str, device: str = "cpu", threshold: float | None = None, batch_size: int = 32) -> None:
        from transformers import AutoModel, AutoProcessor

        local_model_dir(path, "CLIP judge path", "set judge_path to a local transformers CLIP model")
        self.processor = AutoProcessor.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = device
        record = Path(path) / VERIFIER_RECORD
        if threshold is None and record.exists():
            threshold = json.loads(record.read_text()).get("threshold")
        self.threshold = 0.25 if threshold is None else threshold
        self.batch_size = batch_size

    @torch.no_grad()
    def judge_pairs(self, pairs: list[tuple[str, Image.Image]]) -> list[Verdict]:
        similarity = []
        for start in range(0, len(pairs), self.batch_size):
            batch = pairs[start : start + self.batch_size]
            prompts = list(dict.fromkeys(prompt for prompt, _ in batch))
            images = [image for _, image in batch]
            inputs = self.processor(text=prompts, images=images, return_tensors="pt", padding=True).to(self.device)
            outputs = self.model(**inputs)
            image = torch.nn.functional.normalize(outputs.image_embeds, dim=-1)
            text = torch.nn.functional.normalize(outputs.text_embeds, dim=-1)
            own_text = text[[prompts.index(prompt) for prompt, _ in batch]]
            similarity += (image * own_text).sum(-1).tolist()
        return [Verdict(s >= self.threshold, s, 1 - s) for s in similarity]


class GenEvalOracleJudge(PairJudge):
    """GenEval's own verdict with a detector (the exact Shapes detector on the embedded domain): an upper bound."""

    def __init__(self, detector: Detector, metadata: dict[str, dict]) -> None:
        self.detector = detector
        self.metadata = metadata

    def judge_pairs(self, pairs: list[tuple[str, Image.Image]]) -> list[Verdict]:
        for prompt in dict.fromkeys(prompt for prompt, _ in pairs):
            if prompt not in self.metadata:
                raise ValueError(
                    f"the GenEval oracle has no metadata for prompt {prompt!r}: give GenEval-format prompts"
                )
        images, metadata = [image for _, image in pairs], [self.metadata[prompt] for prompt, _ in pairs]
        scores = score_images(images, metadata, self.detector)  # the Shapes detector: exact and cheap, one by one
        return [Verdict(correct, float(correct), float(not correct)) for correct, _ in scores]


class RandomJudge(PairJudge):
    """Seeded coin flips with random probabilities: the lower bound of selection (any pick is as good as N=1)."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def judge_pairs(self, pairs: list[tuple[str, Image.Image]]) -> list[Verdict]:
        p_yes = torch.rand(len(pairs), generator=self.generator).tolist()
        return [Verdict(p > 0.5, p, 1 - p) for p in p_yes]
