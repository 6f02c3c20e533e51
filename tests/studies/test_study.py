"""The study harness on a synthetic study whose values are known: verdicts generated from the rule,
every per-seed number and the wall times in result.json, finished runs reused, an interrupted
study continued, other settings and quick results under results/ refused, the README block."""

import dataclasses
import json
import re

import pytest

from littlehelp import stats, study, study_report

CALLS: list[tuple[str, int]] = []


def constant_arm(name: str, offset: float, fail_at: tuple[int, ...] = ()) -> study.Arm:
    """An arm whose score is seed-dependent noise plus `offset`; it fails once at the seeds in `fail_at`."""

    def run(context: study.ArmContext) -> dict:
        CALLS.append((name, context.seed))
        if context.seed in fail_at and CALLS.count((name, context.seed)) == 1:
            raise RuntimeError("interrupted")
        noise = [0.01, -0.02, 0.015, -0.005][context.seed] * context.settings["scale"]
        return {"values": {"score": offset + noise, "flat": 1.0}}

    return study.Arm(name, run=run)


def make_study(fail_at: tuple[int, ...] = ()) -> study.Study:
    return study.Study(
        name="toy",
        title="A toy study",
        description="Known offsets.",
        arms=(constant_arm("base", 0.0), constant_arm("better", 0.5, fail_at), constant_arm("worse", -0.5)),
        metrics=(study.Metric("score", "score", True), study.Metric("flat", "flat", True)),
        claims=(
            study.Claim("up", "better beats base", "score", "better", "base"),
            study.Claim("down", "worse beats base", "score", "worse", "base"),
            study.Claim("tiny", "better beats base by 1", "score", "better", "base", threshold=1.0),
            study.Claim("blind", "better beats base on flat", "flat", "better", "base", separation=("base", "worse")),
        ),
        seeds=4,
        settings={"scale": 1.0},
        quick={"scale": 2.0},
        quick_seeds=1,
    )


@pytest.fixture(autouse=True)
def _clear_calls():
    CALLS.clear()


def test_verdicts_values_and_provenance(tmp_path):
    result = study.run_study(make_study(), study.Request("toy", work_dir=str(tmp_path), out=str(tmp_path / "out")))
    verdicts = {c["name"]: c["verdict"] for c in result["claims"]}
    assert verdicts == {
        "up": stats.SUPPORTED,
        "down": stats.CONTRADICTED,
        "tiny": stats.CONTRADICTED,
        "blind": stats.UNTESTABLE,
    }
    written = json.loads((tmp_path / "out" / "result.json").read_text())
    assert written["values"]["better"]["score"] == pytest.approx([0.51, 0.48, 0.515, 0.495])
    assert written["claims"][0]["improvements"] == pytest.approx([0.5] * 4)
    assert len(written["wall_seconds"]["base"]) == 4 and written["provenance"]["versions"]["scipy"]
    assert "**supported**" in (tmp_path / "out" / "table.md").read_text()


def test_finished_runs_are_reused_and_an_interrupted_study_continues(tmp_path):
    request = study.Request("toy", work_dir=str(tmp_path), out=str(tmp_path / "out"))
    with pytest.raises(RuntimeError, match="interrupted"):
        study.run_study(make_study(fail_at=(2,)), request)
    done_before = len(CALLS)
    study.run_study(make_study(fail_at=(2,)), request)
    rerun = CALLS[done_before:]
    assert rerun[0] == ("better", 2) and ("base", 0) not in rerun and len(rerun) == 12 - (done_before - 1)


def test_a_study_continues_in_another_work_folder_from_the_progress_kept(tmp_path):
    first = study.Request(
        "toy", work_dir=str(tmp_path / "a"), out=str(tmp_path / "out_a"), progress=str(tmp_path / "kept")
    )
    with pytest.raises(RuntimeError, match="interrupted"):
        study.run_study(make_study(fail_at=(2,)), first)
    (tmp_path / "a" / "base" / "seed_0" / "checkpoint.bin").write_bytes(b"not kept")
    kept = sorted(p.relative_to(tmp_path / "kept").as_posix() for p in (tmp_path / "kept").rglob("*.json"))
    finished = [(arm, seed) for seed in (0, 1) for arm in ("base", "better", "worse")] + [("base", 2)]
    assert kept == sorted(["study.json", *(f"{arm}/seed_{seed}/outcome.json" for arm, seed in finished)])
    assert not list((tmp_path / "kept").rglob("checkpoint.bin"))
    done_before = len(CALLS)
    second = dataclasses.replace(first, work_dir=str(tmp_path / "b"), out=str(tmp_path / "out_b"))
    result = study.run_study(make_study(fail_at=(2,)), second)
    assert CALLS[done_before:][0] == ("better", 2) and len(CALLS[done_before:]) == 12 - 7  # the 7 kept are not rerun
    straight = study.run_study(
        make_study(), study.Request("toy", work_dir=str(tmp_path / "c"), out=str(tmp_path / "o"))
    )
    assert result["values"] == straight["values"]
    shared = {"kept": study.Arm("kept", run=lambda context: {"values": {"score": 1.0}}, per_seed=False)}
    with_shared = dataclasses.replace(make_study(), arms=(shared["kept"], *make_study().arms))
    study.run_study(
        with_shared, dataclasses.replace(second, work_dir=str(tmp_path / "e"), progress=str(tmp_path / "k2"))
    )
    changed = study.Arm("kept", run=lambda context: {"values": {"score": 2.0}}, per_seed=False)
    again = dataclasses.replace(with_shared, arms=(changed, *make_study().arms))
    with pytest.raises(study.StudyError, match="shared run kept came out otherwise"):
        study.run_study(again, dataclasses.replace(second, work_dir=str(tmp_path / "f"), progress=str(tmp_path / "k2")))
    other = study.Request(
        "toy", quick=True, work_dir=str(tmp_path / "d"), out=str(tmp_path / "o2"), progress=str(tmp_path / "kept")
    )
    with pytest.raises(study.StudyError, match="other settings"):
        study.run_study(make_study(), other)


def test_exploratory_comparisons_are_judged_in_a_holm_family_of_their_own():
    values = {
        "base": {"score": [0.0] * 4},
        "better": {"score": [0.3, 0.1, 0.25, 0.15]},
        "worse": {"score": [0.2, -0.1, 0.3, 0.0]},
    }
    up = study.Claim("up", "better beats base", "score", "better", "base")
    aside = study.Claim("aside", "worse beats base", "score", "worse", "base", exploratory=True)
    toy = make_study()
    alone = study.judge_claims(dataclasses.replace(toy, claims=(up,)), values)
    both = study.judge_claims(dataclasses.replace(toy, claims=(up, aside)), values)
    assert both[0]["adjusted_p"] == alone[0]["adjusted_p"] == alone[0]["p_value"] and not both[0]["exploratory"]
    assert both[1]["adjusted_p"] == both[1]["p_value"] and both[1]["exploratory"]
    as_claims = study.judge_claims(
        dataclasses.replace(toy, claims=(up, dataclasses.replace(aside, exploratory=False))), values
    )
    assert as_claims[0]["adjusted_p"] == pytest.approx(2 * alone[0]["p_value"])  # what Holm charges a second claim


def test_tables_label_exploratory_comparisons(tmp_path, capsys):
    toy = make_study()
    aside = study.Claim("aside", "worse beats base, explored", "score", "worse", "base", exploratory=True)
    result = study.run_study(
        dataclasses.replace(toy, claims=(*toy.claims, aside)),
        study.Request("toy", work_dir=str(tmp_path), out=str(tmp_path / "out")),
    )
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| worse beats base, explored |" in table and "| **contradicted** (exploratory) |" in table
    assert table.count("(exploratory)") == 2 and study_report.EXPLORATORY in table  # the row and the note
    assert "| **contradicted** (exploratory) |" in study_report.study_block(result)
    assert "[toy] exploratory comparison aside: contradicted" in capsys.readouterr().out


def test_one_seed_gives_no_verdict_and_quick_settings_apply(tmp_path):
    result = study.run_study(make_study(), study.Request("toy", quick=True, work_dir=str(tmp_path)))
    assert {c["verdict"] for c in result["claims"] if c["name"] != "blind"} == {stats.ONE_SEED}
    assert result["values"]["better"]["score"] == pytest.approx([0.52])  # scale 2 from the quick settings
    assert (tmp_path / "result" / "result.json").is_file()


def test_a_work_folder_with_other_settings_is_refused_by_name(tmp_path):
    study.run_study(make_study(), study.Request("toy", quick=True, work_dir=str(tmp_path)))
    with pytest.raises(study.StudyError, match=r"work folder .* other settings \(quick: True there, False now\)"):
        study.run_study(make_study(), study.Request("toy", work_dir=str(tmp_path)))


def test_quick_results_never_go_under_results(tmp_path):
    with pytest.raises(study.StudyError, match="--quick results may not go under"):
        study.folders(study.Request("salt", quick=True, work_dir=str(tmp_path), out=str(study.RESULTS / "salt")))
    work, out = study.folders(study.Request("salt", quick=True))
    assert work.name == "salt-quick" and out == work / "result"
    assert study.folders(study.Request("salt"))[1] == study.RESULTS / "salt"


def test_unknown_study_and_bad_claims_are_one_line_errors():
    with pytest.raises(study.StudyError, match="no study called .nope.; the studies are active, cluster_margin, "):
        study.load("nope")
    with pytest.raises(study.StudyError, match="claim c names unknown arm ghost"):
        study.Study(
            "x",
            "x",
            "x",
            (constant_arm("a", 0),),
            (study.Metric("score", "s", True),),
            (study.Claim("c", "s", "score", "ghost"),),
            seeds=2,
        )


def test_docs_block_is_regenerated_between_its_markers(tmp_path):
    result = study.run_study(make_study(), study.Request("toy", work_dir=str(tmp_path), out=str(tmp_path / "out")))
    page = tmp_path / "docs" / "methods" / "toy.md"
    page.parent.mkdir(parents=True)
    page.write_text("intro\n<!-- study:toy -->\nold numbers\n<!-- /study:toy -->\nend\n")
    (tmp_path / "docs" / "other.md").write_text("no block\n")
    assert study_report.update_docs(tmp_path / "docs", result) == [page]
    text = page.read_text()
    assert "old numbers" not in text and "better beats base | score | better vs base" in text
    assert text.startswith("intro\n") and text.endswith("end\n")
    assert (tmp_path / "docs" / "other.md").read_text() == "no block\n"


def test_the_cli_lists_the_ten_studies(capsys):
    from littlehelp import main

    listed = main.main(["study", "--list"])
    assert [name for name, _ in listed] == list(study.registered()) and len(listed) == 10
    out = capsys.readouterr().out
    padded = ("\nfedpa           FedPA vs FedAvg", "\ncluster_margin  Cluster-Margin", "\ndistillspec_t5  DistillSpec")
    assert all(line in out for line in padded)  # names padded to the longest


def test_the_cli_refuses_a_study_without_a_name(capsys):
    from littlehelp import main

    with pytest.raises(SystemExit) as stopped:
        main.main(["study"])
    assert stopped.value.code == 1 and "name a study to run, or give --list" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(study.registered()))
def test_the_docs_show_each_committed_result_as_generated(name):
    pages = [
        p for p in study_report.docs_pages(study.DOCS) if f"<!-- study:{name} -->" in p.read_text(encoding="utf-8")
    ]
    assert len(pages) == 1, f"the study {name} should have its block in exactly one docs page, not {pages}"
    path = study.RESULTS / name / "result.json"
    if path.is_file():
        assert study_report.study_block(json.loads(path.read_text())) in pages[0].read_text(encoding="utf-8")
    else:
        notes = (study.RESULTS / name / "notes.md").read_text()
        assert re.search(r"not (been |yet )?(re)?run (since|on)", notes, re.I), (
            f"results/{name} has neither result.json nor a not-run note"
        )
