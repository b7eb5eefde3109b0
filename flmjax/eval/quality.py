"""Content metrics: word error rate (jiwer) and Mimi code accuracy."""

from __future__ import annotations

import re

import numpy as np

_PUNCTUATION = re.compile(r"[^\w\s']|_")


def normalize_text(text: str) -> str:
    """The fixed WER normalisation: lowercase, punctuation removed (apostrophes kept: "don't"), whitespace
    collapsed."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def word_error_rate(reference, hypothesis) -> float:
    """(S + D + I) / reference words after `normalize_text`. `reference` and `hypothesis` are both strings or
    both equal-length lists of strings (then the corpus-level rate: errors and words summed over pairs).
    An empty reference contributes its hypothesis words as insertions; with no reference words at all the
    rate is 0.0 when there are no errors, else 1.0."""
    import jiwer

    refs = [reference] if isinstance(reference, str) else list(reference)
    hyps = [hypothesis] if isinstance(hypothesis, str) else list(hypothesis)
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references and {len(hyps)} hypotheses")
    errors = words = 0
    for ref, hyp in zip(refs, hyps):
        ref, hyp = normalize_text(ref), normalize_text(hyp)
        n_ref = len(ref.split())
        words += n_ref
        if n_ref == 0:
            errors += len(hyp.split())
        elif not hyp:
            errors += n_ref
        else:
            out = jiwer.process_words(ref, hyp)
            errors += out.substitutions + out.deletions + out.insertions
    if words == 0:
        return 0.0 if errors == 0 else 1.0
    return errors / words


def code_accuracy(predicted: np.ndarray, reference: np.ndarray, valid: np.ndarray | None = None) -> dict:
    """Exact-match accuracy of audio codes [T, C] (C = 8 Mimi codebooks) over frames where `valid` bool [T]
    (default all). Returns {"per_codebook": [C floats], "overall": float, "n_frames": int}; accuracies are
    None when no frame is valid."""
    predicted, reference = np.asarray(predicted), np.asarray(reference)
    if predicted.shape != reference.shape or predicted.ndim != 2:
        raise ValueError(f"expected two [T, C] arrays of one shape, got {predicted.shape} and {reference.shape}")
    valid = np.ones(predicted.shape[0], bool) if valid is None else np.asarray(valid, bool).reshape(-1)
    match = predicted[valid] == reference[valid]
    n = int(valid.sum())
    if n == 0:
        return {"per_codebook": [None] * predicted.shape[1], "overall": None, "n_frames": 0}
    return {"per_codebook": [float(a) for a in match.mean(0)], "overall": float(match.mean()), "n_frames": n}
