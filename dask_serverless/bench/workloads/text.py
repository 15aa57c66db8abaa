"""Word count and simple text analysis with ``dask.bag`` over generated text."""

from __future__ import annotations

import itertools
import random
import string
from typing import Any

from .base import Workload, from_collections, sized

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "qua", "bri", "don"]


def _vocabulary(size: int) -> list[str]:
    rng = random.Random(0)
    return ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4)))
            for _ in range(size)]


def generate_lines(partition: list[int], lines: int, words_per_line: int) -> list[str]:
    """``lines`` lines of Zipf-distributed words with punctuation and mixed case."""
    vocab = _vocabulary(5000)
    cum_weights = list(itertools.accumulate(1.0 / (r + 1) for r in range(len(vocab))))
    out = []
    for seed in partition:
        rng = random.Random(seed)
        for _ in range(lines):
            words = rng.choices(vocab, cum_weights=cum_weights, k=words_per_line)
            words = [w.capitalize() if rng.random() < 0.1 else w for w in words]
            out.append(" ".join(words) + rng.choice(".,;!?"))
    return out


_STRIP = str.maketrans("", "", string.punctuation)


def normalise(line: str) -> str:
    return line.lower().translate(_STRIP)


def word_count(quick: bool = False, **params: Any) -> Workload:
    """Top words, total words and distinct words of the generated corpus."""
    import dask.bag as db

    p = sized(quick, params, {"partitions": 16, "lines": 2000, "words_per_line": 12},
              {"partitions": 64, "lines": 5000, "words_per_line": 12})
    text = db.from_sequence(range(p["partitions"]), npartitions=p["partitions"]) \
        .map_partitions(generate_lines, p["lines"], p["words_per_line"])
    words = text.map(normalise).map(str.split).flatten()
    top = words.frequencies().topk(20, key=1)
    return from_collections(
        "wordcount", f"{p['partitions']} partitions x {p['lines']} lines (dask.bag)",
        [top, words.count(), words.distinct().count()], p)
