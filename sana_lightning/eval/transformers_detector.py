"""GenEval's detectors for real images, from local paths: Mask2Former instance segmentation (as the official
scorer) or any transformers object detector (e.g. DETR, lighter), each with CLIP colour classification."""

import numpy as np
import torch
from PIL import Image

from sana_lightning.eval.geneval import COLORS, Detection, geneval_class
from sana_lightning.local_paths import local_model_dir

COLOR_TEMPLATES = (
    "a photo of a {color} {object}",
    "a photo of a {color}-colored {object}",
    "a photo of a {color} object",
)
KEYS = ("scores", "labels", "boxes")  # of transformers' object-detection post-processing, per image
BACKGROUND = "#999999"  # GenEval's default `bgcolor`: what replaces the pixels outside an object's mask


def _projected(output) -> torch.Tensor:
    """CLIP's projected embedding: a tensor (transformers 4) or the output's `pooler_output` (transformers 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def masked_crop(image: Image.Image, detection: Detection, background: str = BACKGROUND) -> Image.Image:
    """What CLIP sees, as in GenEval: pixels outside the detection's mask (if any) set to `background`, then the
    crop to its box."""
    image = image.convert("RGB")
    if detection.mask is not None:
        blank = Image.new("RGB", image.size, background)
        image = Image.composite(image, blank, Image.fromarray(detection.mask.astype(np.uint8) * 255))
    return image.crop(tuple(int(round(v)) for v in detection.box))


class CLIPColors:
    """GenEval's colour classification: each object's masked crop, zero-shot among the 10 colours with GenEval's
    three templates (text embeddings averaged per colour), by a CLIP model from a local directory."""

    def __init__(self, clip_path: str, device: str = "cpu", background: str = BACKGROUND) -> None:
        from transformers import AutoModel, AutoProcessor

        clip_path = local_model_dir(clip_path, "CLIP model", "pass --clip_path DIR (e.g. clip-vit-large-patch14)")
        self.device = device
        self.background = background
        self.clip_processor = AutoProcessor.from_pretrained(clip_path)
        self.clip = AutoModel.from_pretrained(clip_path).to(device).eval()
        self._color_embeddings: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _text_embeddings(self, classname: str) -> torch.Tensor:
        if classname not in self._color_embeddings:
            prompts = [t.format(color=c, object=classname) for c in COLORS for t in COLOR_TEMPLATES]
            tokens = self.clip_processor.tokenizer(prompts, padding=True, return_tensors="pt").to(self.device)
            text = _projected(self.clip.get_text_features(**tokens))
            text = torch.nn.functional.normalize(text, dim=-1).view(len(COLORS), len(COLOR_TEMPLATES), -1).mean(1)
            self._color_embeddings[classname] = torch.nn.functional.normalize(text, dim=-1)
        return self._color_embeddings[classname]

    @torch.no_grad()
    def colors_batch(self, groups: list[tuple[Image.Image, list[Detection], str]]) -> list[list[str]]:
        """The colour of every detection of every (image, detections, class name) group: all masked crops in one
        CLIP forward, each compared with its class's colour prompts."""
        crops = [masked_crop(image, d, self.background) for image, detections, _ in groups for d in detections]
        if not crops:
            return [[] for _ in groups]
        pixels = self.clip_processor.image_processor(images=crops, return_tensors="pt")["pixel_values"].to(self.device)
        features = torch.nn.functional.normalize(_projected(self.clip.get_image_features(pixel_values=pixels)), dim=-1)
        colors, start = [], 0
        for _, detections, classname in groups:
            similarity = features[start : start + len(detections)] @ self._text_embeddings(classname).T
            colors.append([COLORS[i] for i in similarity.argmax(-1).tolist()])
            start += len(detections)
        return colors

    def colors(self, image: Image.Image, detections: list[Detection], classname: str) -> list[str]:
        return self.colors_batch([(image, detections, classname)])[0]


class CLIPColorDetector(CLIPColors):
    """A transformers detector `model` + its image `processor` (set by subclasses), batched, with CLIP colours."""

    def detect(self, image: Image.Image) -> dict[str, list[Detection]]:
        return self.detect_batch([image])[0]

    @torch.no_grad()
    def detect_batch(self, images: list[Image.Image]) -> list[dict[str, list[Detection]]]:
        """Per image, its detections by class name: one model forward for each image size of the batch (one for a
        GenEval folder), so an image's detections never depend on the padding its neighbours would need."""
        found: list[dict[str, list[Detection]]] = [{} for _ in images]
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(image.size, []).append(index)
        for indices in by_size.values():
            same_size = [images[i].convert("RGB") for i in indices]
            inputs = self.processor(images=same_size, return_tensors="pt").to(self.device)
            size = (same_size[0].height, same_size[0].width)
            for index, detections in zip(indices, self._detections(inputs, size)):
                for label, detection in detections:
                    found[index].setdefault(geneval_class(self.model.config.id2label[label]), []).append(detection)
        return found

    def _detections(self, inputs, size: tuple[int, int]) -> list[list[tuple[int, Detection]]]:
        """Per image of a batch of one (height, width) `size`: (label id, detection) pairs."""
        raise NotImplementedError


class TransformersDetector(CLIPColorDetector):
    """Any `AutoModelForObjectDetection` (e.g. DETR with COCO labels): boxes only, so colour is judged on the
    whole box crop."""

    def __init__(self, detector_path: str, clip_path: str, device: str = "cpu", background: str = BACKGROUND) -> None:
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        detector_path = local_model_dir(detector_path, "detector", "pass --detector_path DIR (e.g. detr-resnet-50)")
        super().__init__(clip_path, device, background)
        self.processor = AutoImageProcessor.from_pretrained(detector_path)
        self.model = AutoModelForObjectDetection.from_pretrained(detector_path).to(device).eval()
        self.classes = frozenset(map(geneval_class, self.model.config.id2label.values()))

    def _detections(self, inputs, size: tuple[int, int]) -> list[list[tuple[int, Detection]]]:
        outputs = self.model(**inputs)
        sizes = [size] * len(inputs["pixel_values"])
        return [
            [(label, Detection(tuple(box), score)) for score, label, box in zip(*(r[k].tolist() for k in KEYS))]
            for r in self.processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
        ]


def instances(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, pixel_mask: torch.Tensor, size: tuple[int, int]
) -> list[tuple[int, float, np.ndarray]]:
    """mmdet's Mask2Former instance post-processing of one image: mask logits upsampled to the padded input,
    cropped to the image, resized to its `size` (height, width); the top (query, class) pairs, one per query, each
    scored class probability x mean mask probability inside its mask (logit > 0). (label, score, mask) a non-empty
    mask."""
    resize = torch.nn.functional.interpolate
    masks = resize(mask_logits[None], size=pixel_mask.shape, mode="bilinear", align_corners=False)[0]
    height, width = int(pixel_mask.any(1).sum()), int(pixel_mask.any(0).sum())
    masks = resize(masks[None, :, :height, :width], size=size, mode="bilinear", align_corners=False)[0]
    probabilities = class_logits.softmax(-1)[:, :-1]  # the last class is "no object"
    num_classes = probabilities.shape[1]
    top, indices = probabilities.flatten().topk(len(class_logits))
    masks = masks[indices // num_classes]
    binary = masks > 0
    mask_scores = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    scores = (top * mask_scores).tolist()
    found = zip((indices % num_classes).tolist(), scores, binary.cpu().numpy())
    return [(label, score, mask) for label, score, mask in found if mask.any()]


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The box (x0, y0, x1, y1) around a mask's pixels, as mmdet's `mask2bbox`."""
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


class Mask2FormerDetector(CLIPColorDetector):
    """A `Mask2FormerForUniversalSegmentation` instance-segmentation checkpoint (e.g. Swin-S COCO instance, the
    official scorer's model family): boxes from masks, and colour judged on the masked object."""

    def __init__(self, detector_path: str, clip_path: str, device: str = "cpu", background: str = BACKGROUND) -> None:
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        detector_path = local_model_dir(
            detector_path, "Mask2Former model", "pass --detector_path DIR (e.g. mask2former-swin-small-coco-instance)"
        )
        super().__init__(clip_path, device, background)
        self.processor = AutoImageProcessor.from_pretrained(detector_path)
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(detector_path).to(device).eval()
        self.classes = frozenset(map(geneval_class, self.model.config.id2label.values()))

    def _detections(self, inputs, size: tuple[int, int]) -> list[list[tuple[int, Detection]]]:
        outputs = self.model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
        logits = zip(outputs.class_queries_logits, outputs.masks_queries_logits, inputs["pixel_mask"])
        return [
            [(label, Detection(mask_box(mask), score, mask)) for label, score, mask in instances(*per_image, size)]
            for per_image in logits
        ]
