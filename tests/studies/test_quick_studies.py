"""Every registered study's --quick mode end to end, with tiny shapes: result.json holds every
per-seed number, the claims with generated verdicts and the provenance (reuse and resumption are
tested on a synthetic study in test_study.py).

The quick runs of the studies that train language models take minutes on 2 CPU cores (every trainer
run compiles its steps), and Cluster-Margin's on Fashion-MNIST about a minute, so they are marked `slow`
and left out of `make test`; `make quick-studies` runs them all. A study whose data set is not
installed here is skipped.
"""

import json

import pytest

from active import data
from littlehelp import stats, study

VERDICTS = {stats.SUPPORTED, stats.CONTRADICTED, stats.INCONCLUSIVE, stats.UNTESTABLE, stats.ONE_SEED}


SLOW = {"spactor", "salt", "salt_stored", "distillspec", "distillspec_t5", "softsrv", "cluster_margin"}
NEEDS_FASHION_MNIST = {"cluster_margin"}
FASHION_MNIST_ABSENT = pytest.mark.skipif(
    "fashion_mnist" not in data.available(), reason="Fashion-MNIST is absent (apt-get install dataset-fashion-mnist)"
)


def marks(name: str) -> list[pytest.MarkDecorator]:
    """A study's marks: slow, and skipped where its data set is absent."""
    return [
        *([pytest.mark.slow] if name in SLOW else []),
        *([FASHION_MNIST_ABSENT] if name in NEEDS_FASHION_MNIST else []),
    ]


@pytest.mark.parametrize("name", [pytest.param(name, marks=marks(name)) for name in study.registered()])
def test_quick_study_writes_a_complete_result(name, tmp_path):
    request = study.Request(name, quick=True, work_dir=str(tmp_path / "work"))
    study.run_named(request, command=f"littlehelp study {name} --quick")
    written = json.loads((tmp_path / "work" / "result" / "result.json").read_text())
    declared = study.load(name)
    assert written["study"] == name and written["mode"] == "quick"
    assert [c["name"] for c in written["claims"]] == [c.name for c in declared.claims]
    assert all(c["verdict"] in VERDICTS for c in written["claims"])
    assert [c["exploratory"] for c in written["claims"]] == [c.exploratory for c in declared.claims]
    for metric in declared.metrics:
        for arm in declared.measured_arms(metric):
            assert len(written["values"][arm.name][metric.name]) == len(written["seeds"])
    where = written["provenance"]
    assert where["commit"] and where["versions"]["jax"] and where["machine"]["cpu_count"]
    assert where["before"]["matmul_flops_per_second"] > 0 and where["command"].endswith("--quick")
    assert (tmp_path / "work" / "result" / "plot.png").is_file()
    rows = [
        line
        for line in (tmp_path / "work" / "result" / "table.md").read_text().splitlines()
        if line.endswith(" |") and "**" in line
    ]
    assert len(rows) == len(declared.claims)
    assert [row.endswith("(exploratory) |") for row in rows] == [c.exploratory for c in declared.claims]
