"""GenEval's scoring rules, written from its definition (Ghosh et al., 2023)."""

import numpy as np

POSITION_THRESHOLD = 0.1


def relative_position(box_a, box_b) -> set[str]:
    """Relations of box A to box B (xyxy, image y down): offset of centres, each axis reduced by
    0.1 x (sum of both sizes on that axis), normalised by the offset's length; > 0.5 on an axis decides."""
    boxes = np.asarray([box_a, box_b], dtype=np.float64)[:, :4].reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations
