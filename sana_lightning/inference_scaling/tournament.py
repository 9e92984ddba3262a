"""Selecting the best k of N candidates from per-image judge verdicts (SANA 1.5, section 2.3)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """A judge's answer to "does this image match the prompt?": yes/no and the two answers' probabilities."""

    yes: bool
    p_yes: float
    p_no: float


def beats(a: Verdict, b: Verdict) -> bool:
    """SANA's comparison: a "yes" beats a "no"; two "yes": higher yes-probability; two "no": lower no-probability.
    Ties keep the first candidate (a), so results never depend on anything but the candidates' order."""
    if a.yes != b.yes:
        return a.yes
    if a.yes:
        return a.p_yes >= b.p_yes
    return a.p_no <= b.p_no


def knockout(verdicts: list[Verdict], k: int = 1) -> tuple[list[int], int]:
    """Knockout tournament: neighbours are paired, winners advance, until k remain (exactly N - k comparisons).

    Returns the indices of the k winners (in candidate order) and the number of comparisons made.
    """
    if not 1 <= k <= len(verdicts):
        raise ValueError(f"cannot select k={k} of {len(verdicts)} candidates: use 1 <= k <= N")
    alive, comparisons = list(range(len(verdicts))), 0
    while len(alive) > k:
        pairs = min(len(alive) // 2, len(alive) - k)  # never eliminate past k
        advancing = []
        for i in range(pairs):
            a, b = alive[2 * i], alive[2 * i + 1]
            advancing.append(a if beats(verdicts[a], verdicts[b]) else b)
        comparisons += pairs
        alive = advancing + alive[2 * pairs :]
    return sorted(alive), comparisons


def best_of_n(scores: list[float], k: int = 1) -> list[int]:
    """The k highest-scoring candidates (ties: the earlier one), in candidate order."""
    if not 1 <= k <= len(scores):
        raise ValueError(f"cannot select k={k} of {len(scores)} candidates: use 1 <= k <= N")
    return sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])
