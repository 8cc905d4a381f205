"""Hybrid ranking for the embedded index: BM25 over the chunks' words, cosine over
their vectors, fused as Weaviate's ``relativeScoreFusion`` does (each list's scores
scaled to 0..1 by its min and max, then ``alpha·vector + (1 − alpha)·keyword``), so
the two implementations rank alike.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

ALPHA = 0.75  # Weaviate's default weight of the vector side
CANDIDATES = 50  # how many chunks each side contributes before fusion
BM25_K1 = 1.2
BM25_B = 0.75

_WORD_RE = re.compile(r"[a-z0-9]+")
# Weaviate's "en" stopword preset (the BM25 default there), so both ignore the same words.
_EN_STOPWORDS = """
a an and are as at be but by for if in into is it no not of on or such that the their
then there these they this to was will with
"""
STOPWORDS = frozenset(_EN_STOPWORDS.split())


def terms(text: str) -> list[str]:
    return [w for w in _WORD_RE.findall(text.lower()) if w not in STOPWORDS]


class Bm25:
    """Okapi BM25 over a fixed list of documents (rebuilt when they change)."""

    def __init__(self, documents: Sequence[str]) -> None:
        self._postings: dict[str, list[tuple[int, int]]] = {}
        self._lengths = [0] * len(documents)
        for doc, text in enumerate(documents):
            words = terms(text)
            self._lengths[doc] = len(words)
            for word, count in Counter(words).items():
                self._postings.setdefault(word, []).append((doc, count))
        self._n = len(documents)
        self._avg = sum(self._lengths) / self._n if self._n else 0.0

    def scores(self, query: str) -> dict[int, float]:
        out: dict[int, float] = {}
        if not self._n:
            return out
        for word in set(terms(query)):
            postings = self._postings.get(word)
            if not postings:
                continue
            idf = math.log(1 + (self._n - len(postings) + 0.5) / (len(postings) + 0.5))
            for doc, tf in postings:
                norm = BM25_K1 * (1 - BM25_B + BM25_B * self._lengths[doc] / self._avg)
                out[doc] = out.get(doc, 0.0) + idf * tf * (BM25_K1 + 1) / (tf + norm)
        return out


def _scaled(scores: dict[int, float]) -> dict[int, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high - low < 1e-9:
        return dict.fromkeys(scores, 1.0)
    return {k: (v - low) / (high - low) for k, v in scores.items()}


def fuse(
    similarities: npt.NDArray[np.float32],
    keyword: dict[int, float],
    alpha: float = ALPHA,
    candidates: int = CANDIDATES,
) -> dict[int, float]:
    """Chunk index → fused score, over each side's best ``candidates``."""
    vector: dict[int, float] = {}
    if similarities.size:
        top = np.argsort(-similarities)[:candidates]
        vector = {int(i): float(similarities[i]) for i in top}
    best_keyword = dict(sorted(keyword.items(), key=lambda kv: -kv[1])[:candidates])
    fused: dict[int, float] = {}
    for doc, score in _scaled(vector).items():
        fused[doc] = alpha * score
    for doc, score in _scaled(best_keyword).items():
        fused[doc] = fused.get(doc, 0.0) + (1 - alpha) * score
    return fused
