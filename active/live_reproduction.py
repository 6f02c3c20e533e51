"""Live active learning for word segmentation: a margin-ranked against a random stream (`littlehelp study live_al`).

arXiv 1907.00038 on English with its spaces removed: a character tagger (`active.tagger`) predicts
where words start, scored by word-start F1 on held-out text. Two streams annotate concurrently from
one pool (`active.live`; a sentence is annotated at most once over both): one takes the unclaimed
sentence with the lowest aggregated token margin under its own tagger, the other one at random.
Annotating a sentence takes as long as it has characters, so a stream's effort is the characters it
has annotated. The pool holds lines of the training plays until `chars_before_shift`, then docstring
sentences of the training standard-library modules for `chars_after_shift` more. Pools and test sets
(held-out plays, held-out modules' docstrings) are drawn once; the seed drives the streams' choices,
the tagger's initialisation and its minibatches.

Equal cost. As in the paper's cost model, arms are compared at equal characters annotated: each
stream retrains its tagger, warm-started, each time its clock passes a multiple of `batch_chars`
(a sentence count would give a stream that picks short sentences more updates per character), and
F1 is read at fixed fractions of each phase's characters, linearly interpolated between the
stream's evaluations around that budget. The mean length of the sentences a stream picked is
reported beside F1 (mean margin picks shorter sentences than random).

Pre-registered, before this protocol's first run: the claims rank by the mean token margin. Under
a cost of one per character, a sentence's uncertainty per unit cost is its summed token
uncertainty over its length, one minus its mean margin: ranking by mean margin buys the most
uncertainty per character paid. Min margin ranks by a sentence's one least certain character while
paying for all of them, and favours long sentences (a minimum over more characters is lower). The
claims: mean-margin ranking beats the random stream of its own session (F1 difference paired by
seed, above 0) on held-out plays at the shift, and on held-out docstrings at 25% and at 100% of the
characters after it. The same three comparisons for a min-margin session are exploratory: reported,
marked so, in a Holm family of their own. A random arm is the other stream of its margin arm's
session, so its wall time is counted there.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from littlehelp.study import Arm, ArmContext, Claim, Curve, Metric, Study

DATA_SEED = 20260  # draws the pools and test sets, the same for every seed
FRACTIONS = (0.125, 0.25, 0.5, 1.0)  # of a phase's effort, where the metrics read F1
PRIMARY = "mean"  # the claims' ranking, chosen before the run (see the module docstring)
AGGREGATIONS = (PRIMARY, "min")  # the others are exploratory
PLAYS, DOCSTRINGS = 1, 2  # columns of an evaluation row: (characters annotated, plays F1, docstrings F1)
CURVE_POINTS = 48
# metric name -> (phase: 0 before the shift, 1 after it; fraction of the phase's effort; F1 column)
EFFORT_POINTS = {
    **{f"plays_f1_{100 * f:g}": (0, f, PLAYS) for f in FRACTIONS},
    **{f"docstrings_f1_{100 * f:g}": (1, f, DOCSTRINGS) for f in (0.0, *FRACTIONS)},
    "plays_f1_end": (1, 1.0, PLAYS),
}
DOMAIN_NAMES = {"source": "plays", "target": "docstrings"}


@functools.cache
def load_data(pool_size: int, test_size: int) -> tuple[tuple, tuple]:
    """((plays pool, docstrings pool), (plays test, docstrings test)): pools from the training works
    and modules, tests from the held-out ones, each at most `pool_size` / `test_size` sentences."""
    from active import sequence  # pylint: disable=import-outside-toplevel (jax)

    rng = np.random.default_rng(DATA_SEED)

    def sample(sentences: list[list[str]], count: int) -> sequence.SentenceSet:
        chosen = rng.choice(len(sentences), min(count, len(sentences)), replace=False)
        return sequence.encode([sentences[i] for i in sorted(chosen)])

    pools = (
        sample(sequence.play_sentences("train"), pool_size),
        sample(sequence.docstring_sentences("train"), pool_size),
    )
    tests = (
        sample(sequence.play_sentences("validation"), test_size),
        sample(sequence.docstring_sentences("validation"), test_size),
    )
    return pools, tests


def f1_at(rows: list[list[float]], chars: float, column: int) -> float:
    """The F1 (`column`) at exactly `chars` characters annotated: linear between the evaluations
    around it (rows in clock order); nan before the first evaluation or past the last."""
    if not rows or not rows[0][0] <= chars <= rows[-1][0]:
        return math.nan
    return float(np.interp(chars, [row[0] for row in rows], [row[column] for row in rows]))


def clock(settings: dict[str, Any], phase: int, fraction: float) -> int:
    """A stream's clock at `fraction` of `phase`'s effort."""
    before, after = settings["chars_before_shift"], settings["chars_after_shift"]
    return phase * before + round(fraction * (after if phase else before))


def stream_outcome(run: Any, stream: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One stream's evaluations and values: F1 at every effort point, mean characters per sentence."""
    rows = [[e.chars, e.f1_source, e.f1_target] for e in run.evaluations if e.stream == stream]
    values = {
        name: f1_at(rows, clock(settings, phase, fraction), column)
        for name, (phase, fraction, column) in EFFORT_POINTS.items()
    }
    for domain, name in DOMAIN_NAMES.items():
        lengths = [e.end - e.start for e in run.events if e.stream == stream and e.domain == domain]
        values[f"chars_per_sentence_{name}"] = float(np.mean(lengths)) if lengths else math.nan
    return {"evaluations": rows, "values": values}


def run_session(context: ArmContext, aggregation: str) -> dict[str, Any]:
    """Both streams of one live run: the margin stream's outcome, the random one's under "random_stream"."""
    from active import live, tagger  # pylint: disable=import-outside-toplevel (jax)

    settings = context.settings
    config = live.LiveConfig(
        batch_chars=settings["batch_chars"],
        chars_before_shift=settings["chars_before_shift"],
        chars_after_shift=settings["chars_after_shift"],
        aggregation=aggregation,
        tagger=tagger.TaggerConfig(channels=settings["channels"], steps=settings["steps"]),
    )
    run = live.run(*load_data(settings["pool_size"], settings["test_size"]), config, context.seed)
    ranked, random = (stream_outcome(run, stream, settings) for stream in live.STREAMS)
    return {**ranked, "random_stream": random}


def session_arms(aggregation: str) -> tuple[Arm, Arm]:
    """The margin-ranked stream (which runs the session) and the random stream beside it."""
    margin, kind = f"margin_{aggregation}", "" if aggregation == PRIMARY else " (exploratory)"
    return (
        Arm(margin, run=lambda context: run_session(context, aggregation), label=f"{aggregation} margin{kind}"),
        Arm(
            f"random_{aggregation}",
            run=lambda context: context.outcome(margin)["random_stream"],
            label=f"random, beside {aggregation} margin{kind}",
        ),
    )


def f1_curve(column: int, test: str) -> Curve:
    """F1 against the characters the stream has annotated, read as the metrics are (interpolated)."""

    def read(context: ArmContext) -> tuple[list[float], list[float]]:
        end = clock(context.settings, 1, 1.0)
        grid = [round(end * (i + 1) / CURVE_POINTS) for i in range(CURVE_POINTS)]
        return grid, [f1_at(context.outcome()["evaluations"], x, column) for x in grid]

    return Curve(f"f1_{test.replace(' ', '_')}", f"word-start F1, {test}", "characters annotated by the stream", read)


def effort_label(name: str) -> str:
    """How tables name an effort point."""
    phase, fraction, column = EFFORT_POINTS[name]
    test = "plays" if column == PLAYS else "docstrings"
    return f"F1 {test}, {100 * fraction:g}% of the characters {'after' if phase else 'before'} the shift"


def margin_claims(aggregation: str) -> tuple[Claim, ...]:
    """The three comparisons of a margin stream with the random stream of its session at equal
    characters: claims for the primary aggregation, exploratory for another."""
    margin, random, exploratory = f"margin_{aggregation}", f"random_{aggregation}", aggregation != PRIMARY
    at_shift = Claim(
        f"{aggregation}_margin_beats_random_plays_before_shift",
        f"{aggregation}-margin ranking beats random on held-out plays at the shift (100% of the characters before it)",
        "plays_f1_100",
        margin,
        random,
        exploratory=exploratory,
    )
    after_shift = (
        Claim(
            f"{aggregation}_margin_beats_random_docstrings_{100 * f:g}",
            f"{aggregation}-margin ranking beats random on held-out docstrings at {100 * f:g}% of the "
            "characters after the shift",
            f"docstrings_f1_{100 * f:g}",
            margin,
            random,
            exploratory=exploratory,
        )
        for f in (0.25, 1.0)
    )
    return (at_shift, *after_shift)


STUDY = Study(
    name="live_al",
    title="Live active learning for word segmentation: margin-ranked vs random streams (arXiv 1907.00038)",
    description=__doc__.split("\n\n", 1)[1].strip(),
    arms=tuple(arm for aggregation in AGGREGATIONS for arm in session_arms(aggregation)),
    metrics=(
        *(Metric(name, effort_label(name), True, digits=3) for name in EFFORT_POINTS),
        *(
            Metric(
                f"chars_per_sentence_{name}",
                f"mean characters per sentence picked, {name} (confounder)",
                None,
                digits=3,
            )
            for name in DOMAIN_NAMES.values()
        ),
    ),
    claims=tuple(claim for aggregation in AGGREGATIONS for claim in margin_claims(aggregation)),
    seeds=5,
    settings={
        "pool_size": 3000,
        "test_size": 400,
        "batch_chars": 300,
        "chars_before_shift": 6000,
        "chars_after_shift": 6000,
        "channels": 48,
        "steps": 80,
    },
    quick={
        "pool_size": 200,
        "test_size": 40,
        "batch_chars": 25,
        "chars_before_shift": 200,
        "chars_after_shift": 200,
        "channels": 16,
        "steps": 10,
    },
    curves=(f1_curve(PLAYS, "held-out plays"), f1_curve(DOCSTRINGS, "held-out docstrings")),
)
