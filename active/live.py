"""Live active learning for word segmentation: a model-ranked and a random annotation stream, run
concurrently over one pool, each retraining its own tagger as its labels arrive (arXiv 1907.00038).

    result = active.live.run(pools=(plays, docstrings), tests=(plays_test, docstrings_test),
                             config=LiveConfig(), seed=0)

Time. Annotating a sentence takes as many time units as it has characters, so a stream's clock is
the number of characters it has annotated. Each stream has one annotator who starts the next
sentence as soon as the last one is done. Concurrency is simulated deterministically: annotation
events are processed in order of their start time, ties going to the stream listed first in
`STREAMS` ("ranked", then "random"); `LiveRun.events` lists them in that order. Within a stream the
events are back to back and never overlap.

The pool. Both streams draw from the same pool, and a sentence is annotated at most once over both
streams: a stream claims a sentence when it starts annotating it. Each stream keeps its own
labelled set and its own tagger.

Selection. The ranked stream takes the unclaimed sentence with the lowest aggregated token margin
under its current tagger (`sequence.sentence_margins`, `LiveConfig.aggregation` "mean" or "min",
ties to the lowest pool index); until its first model exists it takes sentences at random, as the
random stream always does (each stream has its own generator, seeded from `seed`).

Retraining. Batches are built to a character budget, not a sentence count: each time a stream's
clock passes a multiple of `batch_chars` (with the sentence that passes it) the stream updates its
tagger, so every stream updates at the same annotation costs, however long the sentences it picks
(a sentence passing two multiples gives one update). An update is `tagger.steps` more Adam steps on
all of the stream's labels, warm-started from its previous parameters and optimizer state (both
streams start from the same initialisation). Updates are taken to be instantaneous. After each
update the tagger is scored (word-start F1) on both held-out test sets.

The shift. Sentences started before time `chars_before_shift` come from the source pool (index 0),
later ones from the target pool (index 1); the run ends when both streams' clocks pass
`chars_before_shift + chars_after_shift`, and a stream with labels not yet trained on updates once
more.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from active import sequence, tagger
from active.sequence import SentenceSet
from active.validation import SelectionInputError, check_integer

STREAMS = ("ranked", "random")
DOMAINS = ("source", "target")


@dataclasses.dataclass(frozen=True)
class LiveConfig:
    """Settings of a live run.

    Attributes:
      batch_chars: characters a stream annotates between two updates of its tagger: it updates each
        time its clock passes a multiple of it.
      chars_before_shift: time (characters annotated per stream) at which the pool switches domain.
      chars_after_shift: time after the shift until the streams stop.
      aggregation: how the ranked stream aggregates token margins per sentence ("mean" or "min").
      tagger: the tagger and how many steps one update takes.
    """

    batch_chars: int = 300
    chars_before_shift: int = 6000
    chars_after_shift: int = 6000
    aggregation: str = "mean"
    tagger: tagger.TaggerConfig = tagger.TaggerConfig()

    def __post_init__(self) -> None:
        check_integer("batch_chars", self.batch_chars, 1)
        check_integer("chars_before_shift", self.chars_before_shift, 1)
        check_integer("chars_after_shift", self.chars_after_shift, 0)
        sequence.check_aggregation(self.aggregation)


@dataclasses.dataclass(frozen=True)
class Event:
    """One annotation: `sentence` indexes the pool of `domain`; times are in characters."""

    stream: str
    domain: str
    sentence: int
    start: int
    end: int


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A stream's tagger after an update, scored on both test sets."""

    stream: str
    chars: int  # characters this stream had annotated (its clock) when the update finished
    sentences: int
    f1_source: float
    f1_target: float


@dataclasses.dataclass(frozen=True)
class LiveRun:
    """Every annotation event (in processing order) and every evaluation (in update order)."""

    events: tuple[Event, ...]
    evaluations: tuple[Evaluation, ...]


@dataclasses.dataclass
class _Stream:
    """What one stream carries: its clock, labels, tagger and cached pool margins."""

    name: str
    rng: np.random.Generator
    time: int = 0
    labelled: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (domain, pool index)
    pending: int = 0  # labels not yet trained on
    updates: int = 0
    model: tagger.TaggerState | None = None
    margins: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # domain -> pool margins


def check_inputs(pools: tuple[SentenceSet, SentenceSet], tests: tuple[SentenceSet, SentenceSet]) -> None:
    """Refuses empty pools or test sets, or sets of different widths."""
    for kind, sets in (("pool", pools), ("test set", tests)):
        for domain, sentences in zip(DOMAINS, sets):
            if len(sentences) == 0:
                raise SelectionInputError(f"the {domain} {kind} is empty: 0 sentences")
    widths = {s.chars.shape[1] for s in (*pools, *tests)}
    if len(widths) > 1:
        raise SelectionInputError(f"pools and test sets must share one width, got {sorted(widths)}")


class _Live:
    """The event loop over both streams (see the module docstring)."""

    def __init__(
        self,
        pools: tuple[SentenceSet, SentenceSet],
        tests: tuple[SentenceSet, SentenceSet],
        config: LiveConfig,
        seed: int,
    ):
        self.pools, self.tests, self.config, self.seed = pools, tests, config, seed
        self.claimed = [np.zeros(len(pool), bool) for pool in pools]
        self.streams = [_Stream(name, np.random.default_rng([seed, i])) for i, name in enumerate(STREAMS)]
        self.events: list[Event] = []
        self.evaluations: list[Evaluation] = []

    def run(self) -> LiveRun:
        """Annotates until both clocks pass the end time, then trains every stream's pending labels."""
        end = self.config.chars_before_shift + self.config.chars_after_shift
        while (stream := min(self.streams, key=lambda s: s.time)).time < end:
            batches_before = stream.time // self.config.batch_chars
            self.annotate(stream)
            if stream.time // self.config.batch_chars > batches_before:
                self.update(stream)
        for stream in self.streams:
            if stream.pending:
                self.update(stream)
        return LiveRun(tuple(self.events), tuple(self.evaluations))

    def annotate(self, stream: _Stream) -> None:
        """The stream picks, claims and labels one sentence of the current domain's pool."""
        domain = 0 if stream.time < self.config.chars_before_shift else 1
        index = self.choose(stream, domain)
        self.claimed[domain][index] = True
        cost = int(self.pools[domain].lengths[index])
        self.events.append(Event(stream.name, DOMAINS[domain], index, stream.time, stream.time + cost))
        stream.time += cost
        stream.labelled.append((domain, index))
        stream.pending += 1

    def choose(self, stream: _Stream, domain: int) -> int:
        """The ranked stream's most uncertain unclaimed sentence, or a uniformly random one."""
        unclaimed = np.flatnonzero(~self.claimed[domain])
        if len(unclaimed) == 0:
            raise SelectionInputError(
                f"the {DOMAINS[domain]} pool is exhausted ({len(self.claimed[domain])} "
                "sentences): use a larger pool or fewer characters per phase"
            )
        if stream.name == "random" or stream.model is None:
            return int(stream.rng.choice(unclaimed))
        if domain not in stream.margins:
            pool = self.pools[domain]
            stream.margins[domain] = sequence.sentence_margins(
                tagger.probabilities(stream.model, pool), pool.mask, self.config.aggregation
            )
        return int(unclaimed[np.argmin(stream.margins[domain][unclaimed])])

    def update(self, stream: _Stream) -> None:
        """Warm-started retraining on the stream's labels, then scoring on both test sets."""
        if stream.model is None:
            stream.model = tagger.init_tagger(self.config.tagger, self.seed, self.pools[0].chars.shape[1])
        stream.updates += 1
        train_seed = (self.seed * 100_003 + stream.updates) * len(STREAMS) + STREAMS.index(stream.name)
        stream.model = tagger.train(stream.model, self.labelled_set(stream), train_seed)
        stream.pending, stream.margins = 0, {}
        scores = [tagger.evaluate(stream.model, test).f1 for test in self.tests]
        self.evaluations.append(Evaluation(stream.name, stream.time, len(stream.labelled), *scores))

    def labelled_set(self, stream: _Stream) -> SentenceSet:
        """The stream's labelled sentences: those of the source pool, then those of the target pool."""
        parts = [
            pool.subset(np.array([i for d, i in stream.labelled if d == domain], np.int64))
            for domain, pool in enumerate(self.pools)
        ]
        return SentenceSet(
            *(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(SentenceSet))
        )


def run(
    pools: tuple[SentenceSet, SentenceSet],
    tests: tuple[SentenceSet, SentenceSet],
    config: LiveConfig = LiveConfig(),
    seed: int = 0,
) -> LiveRun:
    """Runs both streams; `pools` and `tests` are (source, target) sentence sets of one width.

    Bad input (an empty pool or test set, sets of different widths) is refused before anything
    trains, with a `SelectionInputError` naming it.
    """
    check_inputs(pools, tests)
    return _Live(pools, tests, config, seed).run()
