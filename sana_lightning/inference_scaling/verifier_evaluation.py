"""How well a trained verifier judges held-out Shapes scenes: accuracy on true captions and each hard-negative kind,
pairwise ranking, and selection between images (what a tournament over N samples needs); the CLIP's threshold."""

import itertools
from collections import defaultdict

from sana_lightning.inference_scaling.tournament import beats
from sana_lightning.inference_scaling.verifier_data import holds


def best_threshold(scores: list[float], labels: list[bool]) -> float:
    """The cosine threshold ("yes" at or above it) of the highest accuracy (midway between neighbouring scores)."""
    ranked = sorted(zip(scores, labels))
    correct = sum(not label for _, label in ranked)  # threshold above every score: all "no"
    best, threshold = correct, ranked[-1][0] + 1e-3
    for i in range(len(ranked) - 1, -1, -1):
        correct += 1 if ranked[i][1] else -1  # ranked[i] becomes "yes"
        if correct > best:
            best = correct
            threshold = (ranked[i][0] + ranked[i - 1][0]) / 2 if i else ranked[0][0] - 1e-3
    return threshold


def rivals(held_out) -> list[tuple[int, int]]:
    """(example, rival) index pairs: each held-out example with the next one of its task whose image its true caption
    is false of (the next such one when none follows)."""
    found = []
    for i, example in enumerate(held_out):
        for j in itertools.chain(range(i + 1, len(held_out)), range(i)):
            other = held_out[j]
            if other.scene.tag == example.scene.tag and not holds(example.positive, other.scene):
                found.append((i, j))
                break
    return found


def held_out_report(held_out, verdicts, rival_pairs, rival_verdicts) -> dict:
    """Held-out accuracy of the verdicts (three per example: its true caption, its hard negative, then its near miss
    with the true caption) overall (true captions and hard negatives), on true captions and each negative kind, and on
    each task; `pair_*`: how often the true caption's p_yes is above its negative's; `selection_*`: how often the
    tournament's comparison prefers the image a caption is true of to a rival image of the same task it is false of;
    `near_miss_*`: the same against the image's near miss (both what picking the best of N generated images needs)."""

    def mean(values: list[bool]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None  # None: no rival (a task held out once)

    by_kind, by_task, pair_task, pair_kind, selection, near = (defaultdict(list) for _ in range(6))
    for example, positive, negative, missed in zip(held_out, verdicts[::3], verdicts[1::3], verdicts[2::3]):
        by_kind["positive"].append(positive.yes)
        by_kind[example.kind].append(not negative.yes)
        by_task[example.scene.tag] += [positive.yes, not negative.yes]
        pair_kind[example.kind].append(positive.p_yes > negative.p_yes)
        pair_task[example.scene.tag].append(positive.p_yes > negative.p_yes)
        near[example.scene.tag].append(not beats(missed, positive))  # a tie goes to the near miss
        by_kind["near_miss"].append(not missed.yes)
    for (i, _), rival in zip(rival_pairs, rival_verdicts):
        selection[held_out[i].scene.tag].append(not beats(rival, verdicts[3 * i]))  # a tie goes to the rival
    flat = lambda groups: [value for values in groups.values() for value in values]  # noqa: E731
    return {
        "accuracy": mean(flat(by_task)),
        "pair_accuracy": mean(flat(pair_task)),
        "selection_accuracy": mean(flat(selection)),
        "near_miss_selection": mean(flat(near)),
        "near_miss_selection_by_task": {key: mean(values) for key, values in near.items()},
        "by_kind": {key: mean(values) for key, values in by_kind.items()},
        "by_task": {key: mean(values) for key, values in by_task.items()},
        "pair_by_kind": {key: mean(values) for key, values in pair_kind.items()},
        "pair_by_task": {key: mean(values) for key, values in pair_task.items()},
        "selection_by_task": {key: mean(values) for key, values in selection.items()},
        "examples": len(held_out),
    }
