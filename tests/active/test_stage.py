"""active.stage: every selector through the seqio stage equals the array API; the new Task holds
exactly the selected examples; a selected Task trains through `littlehelp train` from gin."""

import math

import gin
import numpy as np
import pytest
import seqio
from scipy.cluster import hierarchy

import littlehelp.data  # noqa: F401  (registers docstrings_lm)
from active import loop, stage
from active.selectors import SELECTORS, Pool, gradient_embeddings, make_selector
from active.validation import SelectionInputError
from littlehelp import main
from littlehelp.data import pipeline

POOL = 60
CENTRE = 30_000.0


def token_sums(examples):
    return np.array([float(e["targets"].sum()) for e in examples])


def token_sum_scorer(examples):
    """Two classes from the token sum (uncertain near CENTRE), a second model shifted from the first;
    embeddings: token histograms mod 8; scores: the token sums; labels: token sum below CENTRE."""
    sums = token_sums(examples)
    p = 1.0 / (1.0 + np.exp(-(sums - CENTRE) / 4000.0))
    second = 1.0 / (1.0 + np.exp(-(sums - 1.5 * CENTRE) / 8000.0))
    embeddings = np.stack([np.bincount(e["targets"] % 8, minlength=8) / len(e["targets"]) for e in examples])
    return {
        "probabilities": np.stack([p, 1 - p], axis=1),
        "second_probabilities": np.stack([second, 1 - second], 1),
        "embeddings": embeddings.astype(np.float32),
        "scores": sums,
        "labels": (sums < CENTRE).astype(np.int64),
    }


gin.external_configurable(token_sum_scorer, module="test_stage")


@pytest.fixture(scope="module")
def source_examples():
    return stage.read_examples("docstrings_lm", "train", max_examples=POOL)


def task_examples(name, split="train"):
    task = seqio.get_mixture_or_task(name)
    return list(task.get_dataset(None, split=split, shuffle=False, try_in_mem_cache=False).as_numpy_iterator())


def test_margin_stage_keeps_exactly_the_examples_nearest_the_boundary(source_examples):
    result = stage.select("docstrings_lm", token_sum_scorer, "margin", 8, max_examples=POOL, name="sel_margin")
    distance = np.abs(token_sums(source_examples) - CENTRE)
    expected = np.argsort(distance, kind="stable")[:8]
    assert distance[expected].max() < np.sort(distance)[8]  # no tie at the cut
    assert sorted(result.indices) == sorted(expected)
    kept = task_examples("sel_margin")
    assert [e["targets"].tolist() for e in kept] == [source_examples[i]["targets"].tolist() for i in result.indices]
    assert result.pool_size == POOL and result.task_name == "sel_margin"


def test_other_splits_pass_through_unchanged():
    stage.select("docstrings_lm", token_sum_scorer, "random", 4, max_examples=POOL, name="sel_random")
    ours, theirs = task_examples("sel_random", "validation"), task_examples("docstrings_lm", "validation")
    assert len(ours) == len(theirs) > 0
    assert all((a["targets"] == b["targets"]).all() for a, b in zip(ours, theirs))


def reference_pool(name, scores, budget):
    """The Pool a user of the array API would build by hand for selector `name`."""
    fields = dict(scores)
    if name == "badge":
        fields["gradient_embeddings"] = gradient_embeddings(scores["probabilities"], scores["embeddings"])
    if name == "cluster_margin":
        linkage = hierarchy.linkage(scores["embeddings"].astype(np.float64), "average")
        fields["cluster_ids"] = hierarchy.fcluster(linkage, loop.default_num_clusters(POOL, budget), "maxclust")
    return Pool(**fields)


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_every_selector_selects_through_the_stage_as_through_the_array_api(name, source_examples):
    budget = 6
    result = stage.select(
        "docstrings_lm", token_sum_scorer, name, budget, max_examples=POOL, seed=3, name=f"sel_{name}"
    )
    pool = reference_pool(name, token_sum_scorer(source_examples), budget)
    expected = make_selector(name).select(pool, budget, np.random.default_rng(3))
    np.testing.assert_array_equal(result.indices, expected.indices)
    kept = task_examples(f"sel_{name}")
    assert len(kept) == len(expected.indices) and 0 < len(kept) <= budget  # iwes_dis, iwes_ent: at most budget
    if expected.weights is None:
        assert result.weights is None and all(pipeline.EXAMPLE_WEIGHT not in e for e in kept)
    else:  # IWeS: each selected example holds its importance weight, once (no repeats)
        np.testing.assert_array_equal([e[pipeline.EXAMPLE_WEIGHT] for e in kept], expected.weights.astype(np.float32))


def test_selection_from_scores_streams_the_chosen_positions_in_source_order(source_examples):
    scores = token_sum_scorer(source_examples)
    result = stage.select_from_scores(
        "docstrings_lm", {"scores": scores["scores"]}, "highest_score", 8, name="sel_positions"
    )
    top = np.sort(np.argsort(-token_sums(source_examples), kind="stable")[:8])
    np.testing.assert_array_equal(np.sort(result.indices), top)
    kept = task_examples("sel_positions")
    assert [e["targets"].tolist() for e in kept] == [source_examples[i]["targets"].tolist() for i in top]
    assert all(pipeline.EXAMPLE_WEIGHT not in e for e in kept) and result.pool_size == POOL
    ours, theirs = task_examples("sel_positions", "validation"), task_examples("docstrings_lm", "validation")
    assert [e["targets"].tolist() for e in ours] == [e["targets"].tolist() for e in theirs]


def test_positions_carry_their_importance_weights(source_examples):
    scores = token_sum_scorer(source_examples)
    result = stage.select_from_scores(
        "docstrings_lm", {"probabilities": scores["probabilities"]}, "iwes_ent", 6, name="sel_positions_iwes", seed=3
    )
    expected = make_selector("iwes_ent").select(
        Pool(probabilities=scores["probabilities"]), 6, np.random.default_rng(3)
    )
    order = np.argsort(expected.indices)
    kept = task_examples("sel_positions_iwes")
    assert [e["targets"].tolist() for e in kept] == [
        source_examples[i]["targets"].tolist() for i in expected.indices[order]
    ]
    np.testing.assert_array_equal(
        [e[pipeline.EXAMPLE_WEIGHT] for e in kept], expected.weights[order].astype(np.float32)
    )
    np.testing.assert_array_equal(result.weights, expected.weights)


@pytest.mark.parametrize(
    "indices, message",
    [
        ([3, 60], r"^positions must be in \[0, 60\): found 60$"),
        ([3, -1], r"^positions must be in \[0, 60\): found -1$"),
        ([4, 7, 4], r"^positions must be distinct: 4 repeats$"),
        ([1.0], r"^positions must be integers, got dtype float64$"),
    ],
)
def test_bad_positions_are_refused_by_name(indices, message):
    with pytest.raises(SelectionInputError, match=message):
        stage.register_positions("sel_bad_positions", "docstrings_lm", "train", np.array(indices), POOL)


def test_unknown_score_fields_are_refused():
    with pytest.raises(SelectionInputError, match=r"^unknown score field 'score' \(did you mean 'scores'\?\)"):
        stage.select_from_scores("docstrings_lm", {"score": np.zeros(4)}, "highest_score", 2, name="sel_unknown")


def weight_of(targets):
    """A weight computed from an example's first two tokens (which packing and trimming keep)."""
    return np.float32(0.5 + targets[0] % 5 + (targets[1] % 3) / 3)


@pytest.mark.parametrize("pack", [True, False])
def test_example_weights_reach_every_target_token_of_their_example(source_examples, pack):
    """Each target token of a batch carries the weight of the example it came from (recomputed from the
    segment's own tokens), padding 0, whether the converter packs or pads."""
    examples = source_examples[:24]
    stage.register_subset(
        "sel_weighted",
        "docstrings_lm",
        "train",
        examples,
        weights=np.array([weight_of(e["targets"]) for e in examples]),
    )
    config = pipeline.DatasetConfig(
        "sel_weighted", {"targets": 48}, batch_size=4, feature_converter="lm", pack=pack, shuffle=False, repeat=False
    )
    batches = list(pipeline.host_dataset(config).as_numpy_iterator())
    assert batches
    for batch in batches:
        tokens, weights = batch["decoder_target_tokens"], batch[pipeline.EXAMPLE_WEIGHTS]
        segments = batch["decoder_segment_ids"] if pack else (tokens != 0).astype(np.int32)
        expected = np.zeros_like(weights)
        for row in range(len(tokens)):
            for segment in set(segments[row][segments[row] > 0]):
                where = segments[row] == segment
                expected[row, where] = weight_of(tokens[row, where])
        np.testing.assert_array_equal(weights, expected)
        assert weights.dtype == np.float32


@pytest.mark.parametrize(
    "weights, message",
    [
        (np.array([1.0, 0.0, 2.0]), r"^example weights must be positive: row 1 has 0.0$"),
        (np.array([1.0, np.nan, 2.0]), r"^example weights has 1 row with NaN or Inf \(first: row 1\)$"),
        (np.array([1.0, 2.0]), r"^2 example weights for 3 rows$"),
    ],
)
def test_bad_example_weights_are_refused_by_name(source_examples, weights, message):
    with pytest.raises(SelectionInputError, match=message):
        stage.register_subset("sel_bad_weights", "docstrings_lm", "train", source_examples[:3], weights=weights)


def test_scorer_output_is_checked():
    examples = [{"targets": np.arange(3)}] * 4
    with pytest.raises(ValueError, match="logits"):
        stage.score_examples(lambda batch: {"logits": np.zeros((len(batch), 2))}, examples)
    with pytest.raises(ValueError, match="rows"):
        stage.score_examples(lambda batch: {"probabilities": np.zeros((1, 2))}, examples, batch_size=2)
    scores = stage.score_examples(lambda batch: {"embeddings": np.full((len(batch), 1), len(batch))}, examples, 3)
    np.testing.assert_array_equal(scores["embeddings"][:, 0], [3, 3, 3, 1])


def unused_scorer(examples):
    raise AssertionError("the scorer ran before the input was refused")


@pytest.mark.parametrize(
    "budget, max_examples, message",
    [
        (0, POOL, r"^budget must be a positive integer, got 0$"),
        (-3, POOL, r"^budget must be a positive integer, got -3$"),
        (POOL + 1, POOL, r"^budget must be an integer in \[0, 60\] \(the pool size\), got 61$"),
        (4, 0, r"^the pool \(task 'docstrings_lm', split 'train'\) is empty: 0 rows$"),
    ],
)
def test_bad_budgets_and_empty_pools_are_refused_before_scoring(budget, max_examples, message):
    with pytest.raises(SelectionInputError, match=message):
        stage.select("docstrings_lm", unused_scorer, "margin", budget, max_examples=max_examples, name="sel_refused")


def test_nan_scores_are_refused_before_selecting():
    def nan_scorer(examples):
        scores = token_sum_scorer(examples)
        scores["probabilities"][[5, 9]] = np.nan
        return scores

    with pytest.raises(
        SelectionInputError, match=r"^scorer's probabilities has 2 rows with NaN or Inf \(first: row 5\)$"
    ):
        stage.select("docstrings_lm", nan_scorer, "margin", 4, max_examples=POOL, name="sel_nan")


def test_gin_selection_runs_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(stage, "select", lambda *a, **k: calls.append(k["name"]))
    monkeypatch.setattr(stage, "_SELECTED", {})
    monkeypatch.setattr(seqio.TaskRegistry, "names", classmethod(lambda cls: set(stage._SELECTED)))
    for _ in range(3):
        assert stage.select_task("docstrings_lm", token_sum_scorer, 5, name="once") == "once"
    stage.select_task("docstrings_lm", token_sum_scorer, 6, name="once")  # new arguments: selects again
    assert calls == ["once", "once"]


def test_a_selected_task_trains_through_littlehelp_train(tmp_path):
    run_file = tmp_path / "select.gin"
    run_file.write_text(
        "\n".join(
            [
                "import active.stage",
                "TASK = @stage.select_task()",
                "stage.select_task.task = 'docstrings_lm'",
                "stage.select_task.scorer = @test_stage.token_sum_scorer",
                "stage.select_task.selector = 'margin'",
                "stage.select_task.budget = 16",
                "stage.select_task.max_examples = 64",
                "stage.select_task.name = 'docstrings_lm_margin_16'",
            ]
        )
    )
    summary = main.main(
        [
            "train",
            "--gin_file=models/decoder/tiny.gin",
            "--gin_file=runs/pretrain.gin",
            f"--gin_file={run_file}",
            "--gin.TASK_FEATURE_LENGTHS={'targets': 32}",
            "--gin.BATCH_SIZE=8",
            "--gin.partitioning.MeshConfig.data=1",
            f"--gin.MODEL_DIR={tmp_path / 'run'}",
            "--gin.TRAIN_STEPS=2",
            "--gin.trainer.train.eval_every=0",
            "--gin.trainer.train.peak_flops_per_device=1e9",
            "--gin.optimizers.inverse_sqrt_schedule.warmup_steps=10",
        ]
    )
    assert summary.last_step == 2 and math.isfinite(summary.final_metrics["loss"])
    assert "docstrings_lm_margin_16" in (tmp_path / "run" / "config.gin").read_text()
    assert len(task_examples("docstrings_lm_margin_16")) == 16
