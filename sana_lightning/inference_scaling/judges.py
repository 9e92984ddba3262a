"""Judges of "does this image match the prompt?": a VLM (yes/no probabilities), CLIP, and the GenEval oracle."""

from typing import Protocol

import torch
from PIL import Image

from sana_lightning.eval.geneval import Detector, score_image
from sana_lightning.inference_scaling.tournament import Verdict


class Judge(Protocol):
    def judge(self, images: list[Image.Image], prompt: str) -> list[Verdict]:
        """One verdict per image."""


class VLMJudge:
    """Any transformers image-text-to-text model from a local path (SANA 1.5 uses NVILA-2B).

    Asks whether the image matches the prompt and reads the probabilities of the next token being "yes" or "no"
    after the chat template's generation prompt; the answer is the likelier of the two.
    """

    QUESTION = 'Does this image match the description "{prompt}"? Answer yes or no.'

    def __init__(self, path: str, device: str = "cpu") -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(path)
        self.model = AutoModelForImageTextToText.from_pretrained(path).to(device).eval()
        self.device = device
        tokenizer = self.processor.tokenizer
        self.answer_ids = [tokenizer(word, add_special_tokens=False).input_ids[0] for word in ("yes", "no")]

    @torch.no_grad()
    def judge(self, images: list[Image.Image], prompt: str) -> list[Verdict]:
        messages = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": self.QUESTION.format(prompt=prompt)}],
            }
        ]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        verdicts = []
        for image in images:
            inputs = self.processor(images=image, text=text, return_tensors="pt").to(self.device)
            logits = self.model(**inputs).logits[0, -1].float()
            p_yes, p_no = torch.softmax(logits, dim=-1)[self.answer_ids].tolist()
            verdicts.append(Verdict(p_yes > p_no, p_yes, p_no))
        return verdicts


class CLIPJudge:
    """Image-text cosine similarity of a transformers CLIP from a local path; "yes" above `threshold`."""

    def __init__(self, path: str, device: str = "cpu", threshold: float = 0.25) -> None:
        from transformers import AutoModel, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = device
        self.threshold = threshold

    @torch.no_grad()
    def judge(self, images: list[Image.Image], prompt: str) -> list[Verdict]:
        inputs = self.processor(text=[prompt], images=images, return_tensors="pt", padding=True).to(self.device)
        outputs = self.model(**inputs)
        image = torch.nn.functional.normalize(outputs.image_embeds, dim=-1)
        text = torch.nn.functional.normalize(outputs.text_embeds, dim=-1)
        similarity = (image @ text.T)[:, 0].tolist()
        return [Verdict(s >= self.threshold, s, 1 - s) for s in similarity]


class GenEvalOracleJudge:
    """GenEval's own verdict with a detector (the exact Shapes detector on the embedded domain): an upper bound."""

    def __init__(self, detector: Detector, metadata: dict[str, dict]) -> None:
        self.detector = detector
        self.metadata = metadata

    def judge(self, images: list[Image.Image], prompt: str) -> list[Verdict]:
        if prompt not in self.metadata:
            raise ValueError(f"the GenEval oracle has no metadata for prompt {prompt!r}: give GenEval-format prompts")
        verdicts = []
        for image in images:
            correct = score_image(image, self.metadata[prompt], self.detector)[0]
            verdicts.append(Verdict(correct, float(correct), float(not correct)))
        return verdicts
