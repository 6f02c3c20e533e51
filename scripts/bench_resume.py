"""Resume-cost benchmark: reopening the input stream at batch N by replaying N batches against
reading the tf.data iterator's saved state, at N = 1K and 100K.

For each N, in one process: the replay opens the demo's span-corruption stream (Shakespeare, inputs 128,
targets 29, packed) at batch N the old way and times it until batch N is in hand; that iterator's state
is then written (as a training checkpoint writes it) and a fresh stream is opened from it and timed the
same way until its first batch, N + 1, is in hand. Both streams must agree on batch N + 1, and the
replay's batch N must equal an uninterrupted stream's (checked at the smallest N), or the script stops.
Replaying 100K batches takes minutes: that cost is what the saved state removes.

    python scripts/bench_resume.py [--steps 1000 100000] [--batch_size 8]
writes results/bench_resume.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from littlehelp import partitioning  # noqa: E402
from littlehelp.benchmark import Benchmark, header_markdown  # noqa: E402
from littlehelp.data import DatasetConfig, GlobalBatches, pipeline  # noqa: E402
from littlehelp.features import INPUTS, TARGETS  # noqa: E402

LENGTHS = {INPUTS: 128, TARGETS: 29}  # littlehelp/gin/runs/demo.gin


def _open_timed(config: DatasetConfig, resume: pipeline.ResumePoint) -> tuple[GlobalBatches, dict, float]:
    """(stream, its first batch as numpy, seconds from opening to that batch in hand) at `resume`."""
    mesh = partitioning.make_mesh(partitioning.MeshConfig(1, 1, 1))
    start = time.perf_counter()
    batches = GlobalBatches(config, mesh, resume)
    first = {name: np.asarray(value) for name, value in next(batches).items()}
    return batches, first, time.perf_counter() - start


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def measure(config: DatasetConfig, step: int, folder: Path) -> dict:
    """Seconds to resume at batch `step` by replay and from the saved state, and the state's size.

    The state is written once the replay has handed out batch `step` (so its skip is finished, as in
    any checkpoint a run writes) and resumes at batch `step + 1`, which both streams must agree on.
    """
    replayed, _, replay_seconds = _open_timed(config, pipeline.ResumePoint(step))
    prefix = replayed.iterator_checkpoint().write(str(folder / f"iterator-{step}"))
    want = {name: np.asarray(value) for name, value in next(replayed).items()}
    _, got, state_seconds = _open_timed(config, pipeline.ResumePoint(step + 1, prefix))
    if not _equal(want, got):
        raise SystemExit(f"bench_resume: batch {step + 1} from the saved state differs from the replayed one")
    size = sum(p.stat().st_size for p in folder.glob(f"iterator-{step}*"))
    print(
        f"batch {step}: replay {replay_seconds:.2f} s, saved state {state_seconds:.2f} s ({size / 1e6:.1f} MB)",
        flush=True,
    )
    return {"step": step, "replay_seconds": replay_seconds, "state_seconds": state_seconds, "state_bytes": size}


def check_against_straight_stream(config: DatasetConfig, step: int) -> None:
    """The replayed batch `step` equals what an uninterrupted stream yields there."""
    mesh = partitioning.make_mesh(partitioning.MeshConfig(1, 1, 1))
    straight = GlobalBatches(config, mesh)
    for _ in range(step):
        next(straight)
    want = {name: np.asarray(value) for name, value in next(straight).items()}
    _, got, _ = _open_timed(config, pipeline.ResumePoint(step))
    if not _equal(want, got):
        raise SystemExit(f"bench_resume: the replayed batch {step} differs from the uninterrupted stream's")


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the benchmark and writes the JSON and Markdown reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 100000])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--out_dir", type=Path, default=REPO / "results")
    args = parser.parse_args(argv)
    config = DatasetConfig("shakespeare_span_corruption", LENGTHS, args.batch_size, seed=0)
    bench = Benchmark(__file__, argv, args.out_dir)
    check_against_straight_stream(config, min(args.steps))
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(config, step, Path(folder)) for step in sorted(args.steps)]
    report = bench.report(vars(args), task=config.name, lengths=LENGTHS, results=rows)
    print(markdown(report))
    bench.write(report, markdown(report))


def markdown(report: dict) -> str:
    """The report as a Markdown page."""
    lines = [
        "# Input-stream resume benchmark\n",
        header_markdown(report) + "\n",
        f"{report['task']}, lengths {report['lengths']}, batch {report['config']['batch_size']}, packed, "
        "shuffled. Seconds from opening the stream to holding its first batch: by replaying the N batches before "
        "it, or from the iterator state saved after batch N (tf.data's own threads raise the load "
        "average above the core count while they run):\n",
        "| N | replay s | saved iterator state s | state MB | replay / state |",
        "|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['step']:,} | {r['replay_seconds']:.2f} | {r['state_seconds']:.2f} | "
            f"{r['state_bytes'] / 1e6:.1f} | {r['replay_seconds'] / r['state_seconds']:.0f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
