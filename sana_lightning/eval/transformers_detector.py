"""GenEval's detector for real images: a transformers object detector + CLIP colour classification, local paths."""

import torch
from PIL import Image

from sana_lightning.eval.geneval import COLORS, Detection

COLOR_TEMPLATES = (
    "a photo of a {color} {object}",
    "a photo of a {color}-colored {object}",
    "a photo of a {color} object",
)


def _projected(output) -> torch.Tensor:
    """CLIP's projected embedding: a tensor (transformers 4) or the output's `pooler_output` (transformers 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class TransformersDetector:
    """Any `AutoModelForObjectDetection` (e.g. DETR with COCO labels) and a CLIP model, both from local directories.

    Colour is GenEval's: each detected object is pasted on a grey (#999) background (within its mask, when the
    detector gives one), cropped to its box, and classified zero-shot among the 10 colours with GenEval's three
    templates (text embeddings averaged per colour).
    """

    def __init__(self, detector_path: str, clip_path: str, device: str = "cpu", background: str = "#999999") -> None:
        from transformers import AutoImageProcessor, AutoModel, AutoModelForObjectDetection, AutoProcessor

        self.device = device
        self.background = background
        self.processor = AutoImageProcessor.from_pretrained(detector_path)
        self.model = AutoModelForObjectDetection.from_pretrained(detector_path).to(device).eval()
        self.clip_processor = AutoProcessor.from_pretrained(clip_path)
        self.clip = AutoModel.from_pretrained(clip_path).to(device).eval()
        self._color_embeddings: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def detect(self, image: Image.Image) -> dict[str, list[Detection]]:
        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        result = self.processor.post_process_object_detection(
            outputs, threshold=0.0, target_sizes=[(image.height, image.width)]
        )[0]
        found: dict[str, list[Detection]] = {}
        for score, label, box in zip(result["scores"].tolist(), result["labels"].tolist(), result["boxes"].tolist()):
            found.setdefault(self.model.config.id2label[label], []).append(Detection(tuple(box), score))
        return found

    @torch.no_grad()
    def _text_embeddings(self, classname: str) -> torch.Tensor:
        if classname not in self._color_embeddings:
            prompts = [t.format(color=c, object=classname) for c in COLORS for t in COLOR_TEMPLATES]
            tokens = self.clip_processor.tokenizer(prompts, padding=True, return_tensors="pt").to(self.device)
            text = _projected(self.clip.get_text_features(**tokens))
            text = torch.nn.functional.normalize(text, dim=-1).view(len(COLORS), len(COLOR_TEMPLATES), -1).mean(1)
            self._color_embeddings[classname] = torch.nn.functional.normalize(text, dim=-1)
        return self._color_embeddings[classname]

    def _crop(self, image: Image.Image, detection: Detection) -> Image.Image:
        image = image.convert("RGB")
        if detection.mask is not None:
            blank = Image.new("RGB", image.size, self.background)
            image = Image.composite(image, blank, Image.fromarray(detection.mask.astype("uint8") * 255))
        return image.crop(tuple(int(round(v)) for v in detection.box))

    @torch.no_grad()
    def colors(self, image: Image.Image, detections: list[Detection], classname: str) -> list[str]:
        if not detections:
            return []
        crops = [self._crop(image, d) for d in detections]
        pixels = self.clip_processor.image_processor(images=crops, return_tensors="pt")["pixel_values"].to(self.device)
        features = torch.nn.functional.normalize(_projected(self.clip.get_image_features(pixel_values=pixels)), dim=-1)
        return [COLORS[i] for i in (features @ self._text_embeddings(classname).T).argmax(-1).tolist()]


def make_detector(
    name: str = "shapes", detector_path: str | None = None, clip_path: str | None = None, device: str = "cpu"
):
    """`shapes` (the exact Shapes detector) or `transformers` (detector + CLIP from local paths)."""
    if name == "shapes":
        from sana_lightning.eval.shapes_detector import ShapesDetector

        return ShapesDetector()
    if name == "transformers":
        if not detector_path or not clip_path:
            raise ValueError("the transformers detector needs detector_path and clip_path (local model directories)")
        return TransformersDetector(detector_path, clip_path, device)
    raise ValueError(f"unknown detector '{name}': use shapes or transformers")
