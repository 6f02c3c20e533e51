"""active.study: win/tie/loss, area tables and churn summaries on constructed curves; the CLI."""

import argparse
import dataclasses
import json

import numpy as np
import pytest

from active import data, loop, study
from active.selectors import SELECTORS

SCHEDULE = study.Schedule(2, 2, 3)


def curve(dataset, selector, seed, accuracies, churn_alpha=0.0, churns=None):
    churns = churns or [0.1] * len(accuracies)
    records = [loop.RoundRecord(i, 2 + 2 * i, a, 0.0, None if i == 0 else churns[i])
               for i, a in enumerate(accuracies)]
    return study.Curve(dataset, selector, seed, churn_alpha, SCHEDULE, records)


def test_compare_uses_a_paired_test():
    base = np.array([0.50, 0.60, 0.70, 0.80, 0.90])
    assert study.compare(base + [0.05, 0.06, 0.04, 0.05, 0.05], base) == "win"
    assert study.compare(base - [0.05, 0.06, 0.04, 0.05, 0.05], base) == "loss"
    assert study.compare(base + [0.05, -0.06, 0.04, -0.05, 0.01], base) == "tie"
    assert study.compare(base + 0.01, base) == "win"  # constant shift: the paired test is certain
    assert study.compare(base, base) == "tie"


def test_win_tie_loss_counts_every_round_after_the_seed_set():
    curves = []
    for seed in range(4):
        noise = 0.01 * seed
        curves.append(curve("d", "random", seed, [0.5, 0.6 + noise, 0.7 + noise, 0.8]))
        curves.append(curve("d", "margin", seed, [0.5, 0.7 + noise, 0.7 + noise, 0.75 + [0.01, -0.02, 0.0, 0.01][seed]]))
    counts = study.win_tie_loss(curves, "random")
    assert counts == {"margin": {"win": 1, "tie": 1, "loss": 1}}
    assert study.win_tie_loss(curves, "margin") == {"random": {"win": 1, "tie": 1, "loss": 1}}


def test_area_table_reports_mean_and_standard_error():
    curves = [curve("d", "margin", s, [a, a]) for s, a in enumerate([0.6, 0.7, 0.8])]
    mean, sem = study.area_table(curves)["d"]["margin"]
    assert mean == pytest.approx(0.7)
    assert sem == pytest.approx(np.std([0.6, 0.7, 0.8], ddof=1) / np.sqrt(3))


def test_churn_summary_averages_over_rounds_and_seeds_per_alpha():
    curves = [curve("d", "margin", 0, [0.5, 0.6, 0.7], 0.0, [None, 0.2, 0.4]),
              curve("d", "margin", 1, [0.5, 0.6, 0.9], 0.0, [None, 0.2, 0.2]),
              curve("d", "margin", 0, [0.5, 0.6, 0.6], 0.5, [None, 0.1, 0.1])]
    summary = study.churn_summary(curves)["d"]
    assert summary[0.0]["churn"] == pytest.approx(0.25) and summary[0.0]["final_accuracy"] == pytest.approx(0.8)
    assert summary[0.5]["churn"] == pytest.approx(0.1)


def test_area_table_markdown_bolds_the_best_selector():
    table = {"d": {"random": (0.5, 0.01), "margin": (0.6, 0.02)}}
    text = study.format_area_table(table, ["random", "margin"])
    assert text.splitlines()[2] == "| d | 0.5000 ± 0.0100 | **0.6000 ± 0.0200** |"


def test_cli_runs_the_loop_and_writes_every_curve(tmp_path, capsys):
    output = tmp_path / "curves.json"
    study.main(["--datasets", "wine", "--selectors", "random", "margin", "--seeds", "2", "--rounds", "2",
                "--batch_size", "4", "--churn_alphas", "0", "0.5", "--output", str(output)])
    curves = json.loads(output.read_text())
    assert len(curves) == 2 * 2 * 2  # selectors x seeds x alphas
    for entry in curves:
        records = [loop.RoundRecord(**r) for r in entry["records"]]
        assert [r.labelled for r in records] == [6, 10, 14]
        assert entry["area"] == pytest.approx(loop.area_under_curve(records))
    printed = capsys.readouterr().out
    assert "| wine |" in printed and "vs random: win" in printed and '"churn"' in printed


KNOWN_SELECTORS = ", ".join(sorted(SELECTORS))
BAD_ARGUMENTS = {
    "unknown selectors": (["--datasets", "wine", "--selectors", "random", "margn", "badgee", "margn"],
                          "unknown selectors 'margn' (did you mean 'margin'?), 'badgee' (did you mean 'badge'?); "
                          f"known: {KNOWN_SELECTORS}"),
    "unknown selector": (["--datasets", "wine", "--selectors", "random", "margn"],
                         f"unknown selector 'margn' (did you mean 'margin'?); known: {KNOWN_SELECTORS}"),
    "unavailable data set": (["--datasets", "wine", "no_such_data"],
                             f"unknown data set 'no_such_data'; available here: {', '.join(sorted(data.available()))}"),
    "schedule over the second pool": (["--datasets", "digits", "wine", "--rounds", "30"],
                                      "seed_size 6 + rounds 30 x batch_size 6 = 186 exceeds the wine pool: 124 rows"),
    "batch_size 0": (["--datasets", "wine", "--batch_size", "0"], "batch_size must be a positive integer, got 0"),
    "negative rounds": (["--datasets", "wine", "--rounds", "-2"], "rounds must be a non-negative integer, got -2"),
    "no seeds": (["--datasets", "wine", "--seeds", "0"], "seeds must be a positive integer, got 0"),
}


@pytest.mark.parametrize("argv, message", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_cli_refuses_bad_arguments_in_one_line_before_any_selector_runs(argv, message, monkeypatch, capsys):
    def no_run(*args, selector, **kwargs):
        raise AssertionError(f"selector {selector!r} ran before the arguments were checked")

    monkeypatch.setattr(loop, "run", no_run)
    with pytest.raises(SystemExit) as exit_info:
        study.main(argv)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.splitlines() == [f"active.study: error: {message}"]


def load_reproduce_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "reproduce_active.py"
    spec = importlib.util.spec_from_file_location("reproduce_active", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduce_script_reports_margin_rank_and_writes_tables_and_plots(tmp_path):
    script = load_reproduce_script()
    curves = [curve("d", s, seed, [0.5, a + 0.01 * seed]) for seed in range(3)
              for s, a in [("random", 0.6), ("margin", 0.8), ("badge", 0.7)]]
    verdict = script.margin_verdict(curves, ["random", "margin", "badge"])
    assert verdict.startswith("Margin's rank by mean area under the curve: d: 1 of 3 (best: margin).")
    large = [c for c in curves if c.selector != "badge"]
    churn = [dataclasses.replace(c, churn_alpha=a) for c in curves if c.selector == "margin" for a in (0.0, 0.5)]
    results = {"curves": curves, "large_batch": large, "churn": churn}
    plots = script.plot(results, tmp_path)
    args = argparse.Namespace(seeds=3, selectors=["random", "margin", "badge"])
    script.write_markdown(tmp_path / "active.md", results, args, 60.0, plots)
    text = (tmp_path / "active.md").read_text()
    assert "| d | 0.5550 ± 0.0029 | **0.6550 ± 0.0029** | 0.6050 ± 0.0029 |" in text
    vs_random, vs_margin = text.split("vs random: win")[1], text.split("vs margin: win")[1]
    assert "| margin | 1 | 0 | 0 |\n| badge | 1 | 0 | 0 |" in vs_random
    assert "| random | 0 | 0 | 1 |\n| badge | 0 | 0 | 1 |" in vs_margin
    assert "| d | 0.5 |" in text  # the churn table's a = 0.5 row
    assert all((tmp_path / name).is_file() for name in plots) and len(plots) == 2


def test_bundled_features_are_standardised_with_train_statistics_and_constant_columns_only_centred():
    from sklearn import datasets, model_selection

    loaded = data.load("digits", seed=3)
    features, labels = datasets.load_digits(return_X_y=True)
    train_x, test_x, _, _ = model_selection.train_test_split(features, labels, test_size=0.3, random_state=3,
                                                             stratify=labels)
    std = train_x.std(axis=0)
    assert (std == 0).any()  # digits has pixels that are blank on every train image
    expected = (test_x - train_x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    np.testing.assert_allclose(loaded.test_features, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(loaded.test_features).max() < 100  # no blow-up from a zero deviation
