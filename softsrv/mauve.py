"""MAUVE of synthetic against real text (see docs/methods/softsrv.md, evaluation), on MiniLM features.

MAUVE (Pillutla et al., NeurIPS 2021) compares two samples P and Q of feature vectors: both are
L2-normalised, projected by PCA onto the components that explain `kmeans_explained_var` of their
joint variance, and quantised together by k-means into `num_buckets` clusters; P and Q become two
histograms over the clusters. MAUVE is the area under the divergence curve from (1, 0) through
(exp(-c KL(Q||R_w)), exp(-c KL(P||R_w))) for 25 mixtures R_w = w P + (1 - w) Q to (0, 1), c =
`scaling_factor`: 1 for identical histograms, 0.0041 (its floor for c = 5) for disjoint ones.
mauve-text's `compute_mauve` does the work; this module checks its inputs, passes every setting
explicitly and repeats it over k-means seeds. It is always given features, never texts or tokens,
so mauve-text never loads (or downloads) its own GPT-2 featuriser.

    embedder = SentenceEmbedder.load(pretrained.ensure("minilm_l6"))
    report = mauve_of_texts(synthetic_texts, real_texts, embedder, seeds=(0, 1, 2))
    report["mean"], report["std"], report["stderr"]

Features are the project's own all-MiniLM-L6-v2 sentence embeddings (`littlehelp.embed`, [n, 384],
unit length), never mauve-text's GPT-2 featuriser: they come from the data cache with no download,
run in JAX like the rest of the project, and describe a whole text in one vector (texts past 512
tokens are truncated). Scores on them are comparable with each other, not with MAUVE numbers
published on GPT-2-large features.

Settings (defaults): `num_buckets="auto"` (mauve-text's rule, max(2, round(min(n_p, n_q) / 10));
each sample must have at least `num_buckets` rows), `kmeans_num_redo=5` (k-means restarts, the best
objective kept), `kmeans_max_iter=500`, `kmeans_explained_var=0.9`, `scaling_factor=5`, `seed=0`
(mauve-text's own default is 25). A seed changes the k-means initialisation only, not the samples:
the spread over seeds is the quantisation noise, a lower bound on MAUVE's noise at a given sample
size. P is the real text and Q the synthetic one, as in mauve-text (the score is symmetric up to the
clustering). Unless `verbose=True`, standard error is silenced while MAUVE runs: faiss warns there on
every call that k-means has fewer than 39 points per centroid (always so under "auto").
`small_sample_warning` says when a sample is too small (under MIN_RELIABLE_SAMPLES = 50 texts a side)
for the score to mean much.

Where P's and Q's histograms are equal (identical samples, say) MAUVE is 1 and `mauve_score` returns
1: mauve-text there returns 1 or 0.75 by rounding, its curve's points all tie at x = 1 with the
end point (1, 0), and an unstable argsort may put that end point first.

mauve-text is GPLv3: it is the optional extra `eval` (`pip install -e '.[eval]'`) and is imported
only when a score is computed.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

import numpy as np

from littlehelp.errors import LittlehelpError

NumBuckets = int | Literal["auto"]
MIN_RELIABLE_SAMPLES = 50  # texts per sample below which a score is flagged (`small_sample_warning`)


class MauveInputError(LittlehelpError, ValueError):
    """Features, texts or settings MAUVE cannot use; the message names the culprit."""


class Embedder(Protocol):
    """What `text_features` needs of an embedder (`littlehelp.embed.SentenceEmbedder`)."""

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class MauveScore:
    """One MAUVE value and the settings that produced it (`num_buckets` resolved from "auto")."""

    mauve: float
    num_buckets: int
    num_p: int
    num_q: int
    seed: int
    kmeans_num_redo: int
    kmeans_max_iter: int
    kmeans_explained_var: float
    scaling_factor: float


def checked_features(features: object, name: str) -> np.ndarray:
    """`features` as a float [n, d] array with n, d >= 1 and finite values; else MauveInputError naming `name`."""
    array = np.asarray(features)
    if array.ndim != 2:
        raise MauveInputError(f"{name}: expected a 2-D [rows, width] array, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise MauveInputError(f"{name}: empty, shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise MauveInputError(f"{name}: dtype {array.dtype} is not numeric")
    bad = ~np.isfinite(array)
    if bad.any():
        first = int(np.argwhere(bad)[0, 0])
        raise MauveInputError(f"{name}: {int(bad.sum())} NaN or Inf values, the first in row {first}")
    return array.astype(np.float64 if array.dtype == np.float64 else np.float32)


def auto_buckets(num_p: int, num_q: int) -> int:
    """mauve-text's "auto" bucket count: one per 10 rows of the smaller sample, at least 2."""
    return max(2, int(round(min(num_p, num_q) / 10)))


def resolved_buckets(num_buckets: NumBuckets, num_p: int, num_q: int) -> int:
    """The bucket count: mauve-text's "auto" rule or the integer given, at most min(num_p, num_q)."""
    if num_buckets == "auto":
        buckets = auto_buckets(num_p, num_q)
    elif isinstance(num_buckets, (int, np.integer)) and not isinstance(num_buckets, bool) and num_buckets >= 2:
        buckets = int(num_buckets)
    else:
        raise MauveInputError(f"num_buckets={num_buckets!r}: expected 'auto' or an integer >= 2")
    if min(num_p, num_q) < buckets:
        side, rows = ("p_features", num_p) if num_p <= num_q else ("q_features", num_q)
        raise MauveInputError(f"num_buckets={buckets} needs at least {buckets} rows per sample; {side} has {rows}")
    return buckets


def small_sample_warning(num_real: int, num_synthetic: int) -> str | None:
    """A warning that MAUVE means little when either sample has fewer than MIN_RELIABLE_SAMPLES texts; else None.

    Why 50: MAUVE compares the two samples' histograms over k-means clusters, and "auto" makes one
    cluster per 10 texts of the smaller sample (at least 2), so that each bin rests on about 10 texts.
    50 texts a side give 5 such clusters, taken here as the least that lets the histograms tell most
    pairs of distributions apart; fewer texts give fewer, coarser clusters (2 below 25), fitted by PCA
    and k-means on a few dozen points. It is a floor, not a guarantee (MAUVE's authors use thousands
    of texts per side).
    """
    if min(num_real, num_synthetic) >= MIN_RELIABLE_SAMPLES:
        return None
    return (
        f"MAUVE of {num_synthetic} samples against {num_real} real examples is unreliable: it needs at least "
        f"{MIN_RELIABLE_SAMPLES} of each (here k-means compares them over "
        f"{auto_buckets(num_real, num_synthetic)} clusters)"
    )


def check_settings(
    kmeans_num_redo: int, kmeans_max_iter: int, kmeans_explained_var: float, scaling_factor: float, seed: int
) -> None:
    """MauveInputError naming the first setting out of range."""
    for name, value in (("kmeans_num_redo", kmeans_num_redo), ("kmeans_max_iter", kmeans_max_iter)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise MauveInputError(f"{name}={value!r}: expected an integer >= 1")
    if not 0 < kmeans_explained_var < 1:
        raise MauveInputError(f"kmeans_explained_var={kmeans_explained_var!r}: expected a value in (0, 1)")
    if not scaling_factor > 0:
        raise MauveInputError(f"scaling_factor={scaling_factor!r}: expected a positive value")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**31 - 8:
        raise MauveInputError(f"seed={seed!r}: expected an integer in [0, 2**31 - 8)")


@contextlib.contextmanager
def quiet(verbose: bool) -> Iterator[None]:
    """Unless `verbose`, send file descriptor 2 (faiss's C warnings, Python's stderr) to /dev/null."""
    if verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def mauve_score(
    p_features: object,
    q_features: object,
    *,
    num_buckets: NumBuckets = "auto",
    kmeans_num_redo: int = 5,
    kmeans_max_iter: int = 500,
    kmeans_explained_var: float = 0.9,
    scaling_factor: float = 5.0,
    seed: int = 0,
    verbose: bool = False,
) -> MauveScore:
    """MAUVE of feature samples P [n_p, d] (real) and Q [n_q, d] (synthetic); see the module docstring."""
    p, q = checked_features(p_features, "p_features"), checked_features(q_features, "q_features")
    if p.shape[1] != q.shape[1]:
        raise MauveInputError(f"p_features is {p.shape[1]} wide but q_features {q.shape[1]}")
    buckets = resolved_buckets(num_buckets, len(p), len(q))
    check_settings(kmeans_num_redo, kmeans_max_iter, kmeans_explained_var, scaling_factor, seed)
    import mauve  # GPLv3, the `eval` extra; imports torch and transformers when present (seconds)

    with quiet(verbose):
        out = mauve.compute_mauve(
            p_features=p,
            q_features=q,
            num_buckets=buckets,
            kmeans_num_redo=int(kmeans_num_redo),
            kmeans_max_iter=int(kmeans_max_iter),
            kmeans_explained_var=kmeans_explained_var,
            mauve_scaling_factor=scaling_factor,
            seed=int(seed),
            verbose=verbose,
        )
    value = 1.0 if np.array_equal(out.p_hist, out.q_hist) else float(out.mauve)
    return MauveScore(
        value,
        buckets,
        len(p),
        len(q),
        int(seed),
        int(kmeans_num_redo),
        int(kmeans_max_iter),
        float(kmeans_explained_var),
        float(scaling_factor),
    )


def mauve_over_seeds(
    p_features: object, q_features: object, seeds: Sequence[int] = (0, 1, 2), **settings: object
) -> dict[str, object]:
    """MAUVE under each k-means seed: {"seeds", "mauve" (per seed), "mean", "std" (ddof=1), "stderr",
    and the settings of `MauveScore`}; std and stderr are NaN for a single seed."""
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise MauveInputError(f"seeds={seeds!r}: expected one or more distinct integers")
    if "seed" in settings:
        raise MauveInputError("seed: pass seeds=(...) to mauve_over_seeds, not seed")
    scores = [mauve_score(p_features, q_features, seed=seed, **settings) for seed in seeds]
    values = np.array([score.mauve for score in scores])
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    common = {key: value for key, value in asdict(scores[0]).items() if key not in ("mauve", "seed")}
    return {
        "seeds": [score.seed for score in scores],
        "mauve": values.tolist(),
        "mean": float(values.mean()),
        "std": std,
        "stderr": std / math.sqrt(len(values)),
        **common,
    }


def text_features(texts: Sequence[str], embedder: Embedder, name: str = "texts") -> np.ndarray:
    """The embedder's vectors [len(texts), d] float32 of `texts` (called `name` in errors); empty strings
    are kept and embedded like any other text."""
    if isinstance(texts, str):
        raise MauveInputError(f"{name}: a single string, expected a sequence of strings")
    if not len(texts):
        raise MauveInputError(f"{name}: empty")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise MauveInputError(f"{name}[{index}]: a {type(text).__name__}, not a string")
    features = np.asarray(embedder.embed(list(texts)), np.float32)
    if features.ndim != 2 or len(features) != len(texts):
        raise MauveInputError(f"embedder: returned shape {features.shape} for {len(texts)} {name}")
    return features


def mauve_of_texts(
    synthetic: Sequence[str],
    real: Sequence[str],
    embedder: Embedder,
    seeds: Sequence[int] = (0, 1, 2),
    **settings: object,
) -> dict[str, object]:
    """`mauve_over_seeds` of the real texts (P) against the synthetic ones (Q), on `embedder`'s features."""
    p, q = text_features(real, embedder, "real"), text_features(synthetic, embedder, "synthetic")
    return mauve_over_seeds(p, q, seeds, **settings)
