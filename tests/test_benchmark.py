"""The benchmark harness: interleaved timing, the steadiness refusal, and what a written report holds."""

import json
from collections.abc import Iterator

import pytest

from littlehelp import benchmark, provenance

SCRIPT = str(provenance.REPO / "scripts" / "bench_example.py")


def test_interleaved_calls_the_variants_in_turn_round_by_round():
    calls = []
    variants = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    seconds = benchmark.interleaved(variants, rounds=2, warmup=1)
    assert calls == ["a", "b", "c"] * 3  # the warm-up round, then two timed rounds
    assert {name: len(values) for name, values in seconds.items()} == {"a": 2, "b": 2, "c": 2}
    assert all(value >= 0 for values in seconds.values() for value in values)


def test_repeated_times_one_call_after_its_warmup():
    calls = []
    assert len(benchmark.repeated(lambda: calls.append(1), 3, warmup=2)) == 3 and len(calls) == 5


@pytest.fixture
def rates(monkeypatch) -> Iterator[list[float]]:
    """A scripted series of 2048 matmul rates (FLOP/s) the harness measures in turn, instead of the machine's."""
    series: list[float] = []
    monkeypatch.setattr(benchmark, "matmul_rates", lambda sizes, repeats: {"2048": series.pop(0)})
    yield series
    assert not series, "every scripted rate is measured"


def run(out_dir, rates: list[float], values: list[float], max_spread: float | None) -> benchmark.Benchmark:
    """A Benchmark whose conditions give the matmul rates `values`, checked between two measurements."""
    rates += values
    bench = benchmark.Benchmark(SCRIPT, ["--size", "3"], out_dir, max_matmul_spread=max_spread)
    for _ in bench.between(["first", "second"]):
        pass
    return bench


def test_an_unsteady_run_refuses_in_one_line_and_writes_nothing(tmp_path, rates):
    bench = run(tmp_path / "out", rates, [92e9, 200e9, 180e9], max_spread=0.15)
    with pytest.raises(SystemExit) as refused:
        bench.report({})
    message = str(refused.value.code)
    assert message.startswith("bench_example: the 2048 matmul rate varied by 54% within the run (92-200 GFLOP/s")
    assert "\n" not in message and "no results written" in message
    assert not (tmp_path / "out").exists()


def test_a_steady_run_writes_provenance_load_and_matmul_before_and_after(tmp_path, rates):
    bench = run(tmp_path, rates, [190e9, 180e9, 200e9], max_spread=0.15)  # spread 10%
    report = bench.report({"size": 3, "out_dir": str(tmp_path)}, results=[1, 2])
    bench.write(report, benchmark.header_markdown(report))
    written = json.loads((tmp_path / "bench_example.json").read_text())
    assert written == report and written["results"] == [1, 2] and written["config"] == {"size": 3}
    assert written["commit"] == provenance.git_state()["commit"] and isinstance(written["dirty"], bool)
    assert written["command"] == "python scripts/bench_example.py --size 3"
    assert {"python", "jax", "flax"} <= set(written["versions"]) and written["versions"]["jax"]
    assert {"cpu", "cpu_count", "memory_bytes", "backend", "accelerator"} <= set(written["machine"])
    assert written["before"]["matmul_flops_per_second"] == {"2048": 190e9}
    assert written["after"]["matmul_flops_per_second"] == {"2048": 200e9}
    assert [c["matmul_flops_per_second"]["2048"] for c in written["between"]] == [180e9]
    assert all(len(c["load"]["load_average"]) == 3 and "uptime" in c["load"] for c in benchmark.all_checks(written))
    assert written["matmul_spread"] == pytest.approx(0.1)
    markdown = (tmp_path / "bench_example.md").read_text()
    assert written["commit"][:12] in markdown and written["before"]["load"]["uptime"] in markdown
    assert "before: 2048: 190.0; after: 2048: 200.0; 2048: 180.0-200.0 over 3 checks (spread 10%)" in markdown


def test_without_a_limit_an_unsteady_run_still_reports(tmp_path, rates):
    report = run(tmp_path, rates, [50e9, 200e9, 100e9], max_spread=None).report({})
    assert report["matmul_spread"] == pytest.approx(0.75)
