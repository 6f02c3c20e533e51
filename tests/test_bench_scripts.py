"""Smoke tests of scripts/bench_train_step.py (tiny configurations, a few steps, 1 device),
scripts/bench_kd_loss.py (tiny shapes), scripts/bench_salt_scoring.py (a tiny teacher) and
scripts/bench_speculative.py (a tiny target and drafts)."""

import json
import re

import pytest

from littlehelp.benchmark import all_checks
from tests.helpers import load_script


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("bench")
    bench = load_script("bench_train_step")
    returned = bench.main(
        [
            "--configs",
            "t5-tiny",
            "decoder-tiny",
            "--batch_sizes",
            "4",
            "--devices",
            "1",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--matmul_sizes",
            "256",
            "512",
            "--matmul_repeats",
            "1",
            "--max_matmul_spread",
            "1",
            "--out_dir",
            str(out_dir),
        ]
    )
    return bench, returned, out_dir


def test_writes_json_equal_to_returned_report_and_markdown_table(report):
    _, returned, out_dir = report
    assert json.loads((out_dir / "bench_train_step.json").read_text()) == returned
    table = (out_dir / "bench_train_step.md").read_text()
    assert "| t5-tiny | 4 | 1 (1,1,1) |" in table and "| decoder-tiny | 4 | 1 (1,1,1) |" in table
    assert returned["versions"]["jax"] in table and returned["command"] in table and "GFLOP/s" in table


def test_result_fields_follow_the_conventions(report):
    bench, returned, _ = report
    rates = [check["matmul_flops_per_second"] for check in all_checks(returned)]
    assert len(rates) == 3  # before the first run and after each
    assert all(set(r) == {"256", "512"} for r in rates)  # the sizes asked for (default: 2048 and 4096)
    assert bench.parse_args([]).matmul_sizes == [2048, 4096]
    peak = returned["peak_matmul_flops_per_second"]
    assert peak == max(v for r in rates for v in r.values())
    by_config = {r["config"]: r for r in returned["results"]}
    assert set(by_config) == {"t5-tiny", "decoder-tiny"}
    t5, lm = by_config["t5-tiny"], by_config["decoder-tiny"]
    # tokens/s counts encoder + decoder positions: batch 4 x (16 + 8) for t5-tiny, 4 x 16 for the LM.
    assert t5["tokens_per_second"] * t5["step_seconds"] == pytest.approx(4 * (16 + 8))
    assert lm["tokens_per_second"] * lm["step_seconds"] == pytest.approx(4 * 16)
    for r in returned["results"]:
        assert r["devices"] == 1 and r["batch_size"] == 4 and r["step_seconds"] > 0 and r["compile_seconds"] > 0
        assert r["flops_per_second"] == pytest.approx(r["flops_per_step"] / r["step_seconds"])
        assert r["mfu"] == pytest.approx(r["flops_per_second"] / peak)
        assert 0 < r["mfu"] < 1.5


def test_flops_per_step_match_a_hand_count_for_the_tiny_decoder(report):
    _, returned, _ = report
    lm = next(r for r in returned["results"] if r["config"] == "decoder-tiny")
    b, length, d, heads, kv_heads, k, f, vocab = 4, 16, 16, 2, 1, 8, 32, 128
    attention = 2 * b * length * (d * heads * k * 2 + 2 * d * kv_heads * k) + 4 * b * heads * length * length * k
    forward = attention + 2 * b * length * 3 * d * f + 2 * b * length * d * vocab
    assert lm["flops_per_step"] == pytest.approx(3 * forward)


def test_random_batch_uses_real_feature_names_and_shifted_decoder_inputs():
    bench = load_script("bench_train_step")
    batch = bench.random_batch(bench.CONFIGS["t5-bench"], 2)
    assert batch["encoder_input_tokens"].shape == (2, 512) and batch["decoder_target_tokens"].shape == (2, 114)
    assert (batch["decoder_input_tokens"][:, 1:] == batch["decoder_target_tokens"][:, :-1]).all()
    assert (batch["decoder_input_tokens"][:, 0] == 0).all() and batch["decoder_target_tokens"].min() >= 1
    assert set(bench.random_batch(bench.CONFIGS["decoder-bench"], 2)) == {
        "decoder_input_tokens",
        "decoder_target_tokens",
        "decoder_loss_weights",
    }


@pytest.fixture(scope="module")
def kd_report(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("bench_kd")
    returned = load_script("bench_kd_loss").main(
        [
            "--vocabs",
            "4096",
            "--batch",
            "2",
            "--length",
            "256",
            "--student_dim",
            "16",
            "--teacher_dim",
            "24",
            "--chunk_tokens",
            "16",
            "--kinds",
            "fkl",
            "jsd",
            "--time_at",
            "4096x2",
            "--repeats",
            "2",
            "--matmul_sizes",
            "128",
            "--matmul_repeats",
            "2",
            "--out_dir",
            str(out_dir),
        ]
    )
    return returned, out_dir


def test_kd_bench_writes_json_equal_to_returned_report_and_markdown_tables(kd_report):
    returned, out_dir = kd_report
    assert json.loads((out_dir / "bench_kd_loss.json").read_text()) == returned
    table = (out_dir / "bench_kd_loss.md").read_text()
    assert "| 4096 | chunked_kd | jsd | 8 |" in table and "| 4096 | naive_ce | ce | - |" in table
    assert "| 4096 x 2 x 256 | chunked_kd | fkl | 8 |" in table and returned["before"]["load"]["uptime"] in table


def test_kd_bench_memory_shows_the_full_logits_only_in_naive_cases(kd_report):
    returned, _ = kd_report
    memory = {(r["case"], r["kind"]): r for r in returned["memory"]}
    assert set(memory) == {
        ("naive_ce", "ce"),
        ("chunked_ce", "ce"),
        ("naive_kd", "fkl"),
        ("chunked_kd", "fkl"),
        ("naive_kd", "jsd"),
        ("chunked_kd", "jsd"),
    }
    full = 2 * 256 * 4096 * 4
    for (case, _), r in memory.items():
        assert r["full_logits_bytes"] == full
        assert r["peak_bytes"] == r["temp_bytes"] + r["argument_bytes"] + r["output_bytes"]
        assert (r["temp_bytes"] > full) if case.startswith("naive") else (r["temp_bytes"] < full / 2)
    assert memory[("chunked_kd", "fkl")]["teacher_input_bytes"] == (2 * 256 * 24 + 24 * 4096) * 4


def test_kd_bench_times_three_losses_and_reports_every_target(kd_report):
    returned, _ = kd_report
    assert [r["case"] for r in returned["timing"]] == ["naive_kd", "chunked_kd", "chunked_ce"]
    assert all(len(r["seconds"]) == 2 and r["median_seconds"] > 0 for r in returned["timing"])
    targets = {t["target"]: t for t in returned["targets"]}
    assert len(targets) == 3 and set(returned["before"]["matmul_flops_per_second"]) == {"128"}
    below = targets["chunked KD peak >= 4x below naive KD (vocab 4096)"]
    assert below["met"] == (below["value"] >= 4)
    timed = targets["chunked KD time <= 1.15 x naive KD (4096x2)"]
    by_case = {r["case"]: r for r in returned["timing"]}
    assert timed["value"] == pytest.approx(
        by_case["chunked_kd"]["median_seconds"] / by_case["naive_kd"]["median_seconds"]
    )


def test_salt_scoring_bench_scores_the_whole_split_and_reports_chunked_memory(tmp_path):
    returned = load_script("bench_salt_scoring").main(
        [
            "--task",
            "docstrings_lm",
            "--length",
            "32",
            "--batch_sizes",
            "4",
            "--chunk_size",
            "8",
            "--repeats",
            "2",
            "--teacher",
            "emb_dim=32,num_layers=1,mlp_dim=64,head_dim=16",
            "--matmul_sizes",
            "128",
            "--matmul_repeats",
            "2",
            "--out_dir",
            str(tmp_path),
        ]
    )
    assert json.loads((tmp_path / "bench_salt_scoring.json").read_text()) == returned
    (result,) = returned["results"]
    assert result["sequences"] == 91  # docstrings_lm's validation split, one sequence per docstring
    assert result["full_logits_bytes"] == 4 * 32 * 8192 * 4 and result["temp_bytes"] < result["full_logits_bytes"]
    assert result["model_sequences_per_second"] == pytest.approx(4 / result["model_seconds_per_batch"])
    assert result["streamed_sequences_per_second"] == pytest.approx(91 / result["streamed_seconds"])
    assert f"| 4 | 91 | {result['compile_seconds']:.2f} |" in (tmp_path / "bench_salt_scoring.md").read_text()


def test_speculative_bench_times_a_draft_against_the_target_and_checks_the_goals(tmp_path):
    """A tiny 2-layer target and a random 1-layer draft, greedy and T = 1, batch 1, gamma 1. Derived drafts
    (first=K, vocab=N) are left out: each draft compiles two more decodes, which would double the time."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from littlehelp.data.hf_vocab import TokenizerVocabulary
    from littlehelp.models import DecoderConfig, build_model
    from littlehelp.models.convert import Pretrained, run_folder
    from tests.helpers import random_params

    bench = load_script("bench_speculative")
    words = ["<pad>", "<eos>", "<unk>", *sorted(set(re.findall(r"\w+|[^\w\s]+", " ".join(bench.PROMPTS))))]
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    vocabulary = TokenizerVocabulary(tokenizer, {"eos_token": "<eos>", "unk_token": "<unk>"})

    def tiny_folder(name: str, layers: int, seed: int) -> str:
        config = DecoderConfig(
            vocab_size=64, emb_dim=16, num_layers=layers, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32
        )
        model = build_model(config)
        pretrained = Pretrained("llama", config, model, random_params(model, seed), vocabulary, "random")
        return str(run_folder.write_run_folder(pretrained, tmp_path / name))

    out_dir = tmp_path / "out"
    returned = bench.main(
        [
            "--target",
            tiny_folder("target", 2, 0),
            "--drafts",
            f"tiny={tiny_folder('draft', 1, 1)}",
            "--batch_sizes",
            "1",
            "--temperatures",
            "0",
            "1",
            "--gammas",
            "1",
            "--repeats",
            "2",
            "--call_repeats",
            "1",
            "--max_new_tokens",
            "4",
            "--matmul_sizes",
            "64",
            "--matmul_repeats",
            "1",
            "--out_dir",
            str(out_dir),
        ]
    )
    assert json.loads((out_dir / "bench_speculative.json").read_text()) == returned
    rows = {r["temperature"]: r for r in returned["results"]}
    assert set(rows) == {0.0, 1.0} and all(r["draft"] == "tiny" and r["gamma"] == 1 for r in rows.values())
    assert rows[0.0]["tokens_equal_target_only"] is True and rows[1.0]["tokens_equal_target_only"] is None  # sampled
    for r in rows.values():
        assert len(r["seconds"]) == 2 and r["c"] == pytest.approx(r["draft_call_seconds"] / r["target_call_seconds"])
        assert r["predicted_speedup"] == pytest.approx(r["block_efficiency"] / (r["c"] + 1))
    table = (out_dir / "bench_speculative.md").read_text()
    goals = {goal.temperature: goal for goal in bench.GOALS if goal.batch == 1}
    for s in returned["summary"]:
        assert s["speedup"] == rows[s["temperature"]]["speedup"] and s["goal"] == goals[s["temperature"]].label
        assert s["met"] == (s["speedup"] >= goals[s["temperature"]].threshold)
        assert bench.why_missed(s) in table and (bench.why_missed(s) != "") == (not s["met"])  # a miss is explained
    assert len(returned["summary"]) == 2 and returned["distillation"] == []
    assert "| tiny | 1 |" in table and "n/a (sampled)" in table and returned["command"] in table
    twin = [{**r, "draft": "tiny_distilled", "block_efficiency": 1.5 * r["block_efficiency"]} for r in rows.values()]
    pairs = bench.distillation([*rows.values(), *twin])  # tiny_distilled over tiny, at each temperature
    assert [(d["ratio"], d["met"]) for d in pairs] == [(pytest.approx(1.5), True)] * 2
