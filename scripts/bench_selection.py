"""Selection benchmark: select 100K from a 1M x 64 synthetic pool with margin, coreset and Cluster-Margin.

The pool is a fixed-seed Gaussian mixture (embeddings) with the softmax of a fixed random linear map
as the model's probabilities. Each selector runs in its own child process limited to `--threads`
BLAS/OpenMP threads (and CPUs, where the machine has more); the child reports wall time and its peak
resident memory (ru_maxrss, which includes the loaded pool and the interpreter; the resident size
before selecting is reported beside it). Cluster-Margin's time includes clustering the pool
(`active.clustering.cluster_margin_clusters`: k-means cells + weighted average linkage).

Greedy k-center costs O(n d) per pick, so by default coreset runs `--coreset_picks` picks and the
time for the full budget is extrapolated linearly (marked as such); `--coreset_picks 0` runs it all.
coreset_blocked (same picks, far k-means cells skipped by the triangle inequality) runs the whole
budget.

    python scripts/bench_selection.py                       # the default run, writes results/
    python scripts/bench_selection.py --pool_size 20000 --budget 2000 --out_dir /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SELECTOR_CHOICES = ("margin", "coreset", "coreset_jax", "coreset_blocked", "cluster_margin")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool_size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--budget", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--components", type=int, default=100, help="Gaussian mixture components")
    parser.add_argument(
        "--selectors",
        nargs="+",
        default=["margin", "coreset", "coreset_blocked", "cluster_margin"],
        choices=SELECTOR_CHOICES,
    )
    parser.add_argument("--num_clusters", type=int, default=1000, help="Cluster-Margin clusters")
    parser.add_argument("--num_centroids", type=int, default=2000, help="k-means cells before linkage")
    parser.add_argument(
        "--coreset_picks",
        type=int,
        default=2000,
        help="greedy picks timed for coreset and coreset_jax (0: the whole budget)",
    )
    parser.add_argument(
        "--coreset_blocks",
        type=int,
        default=2000,
        help="k-means cells of coreset_blocked (always runs the whole budget)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out_dir", default=str(REPO / "results"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data_dir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def synthetic_pool(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-seed mixture embeddings [n, dim] (float32) and softmax probabilities [n, classes]."""
    rng = np.random.default_rng(args.seed)
    centres = 2.0 * rng.standard_normal((args.components, args.dim), dtype=np.float32)
    embeddings = rng.standard_normal((args.pool_size, args.dim), dtype=np.float32)
    embeddings += centres[rng.integers(0, args.components, args.pool_size)]
    logits = embeddings @ (rng.standard_normal((args.dim, args.classes), dtype=np.float32) / 8.0)
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return embeddings, probabilities


# ----------------------------------------------------------------------------------------------
# Child process: one selector.


def _rss_gb() -> float:
    with open("/proc/self/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kb / 2**20


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def run_selector(
    name: str, args: argparse.Namespace, embeddings: np.ndarray, probabilities: np.ndarray
) -> dict[str, Any]:
    """Times one selector on the pool; Cluster-Margin's clustering is timed inside its total."""
    from active import Pool, cluster_margin_clusters, make_selector

    rng = np.random.default_rng(args.seed)
    record: dict[str, Any] = {"selector": name}
    start = time.perf_counter()
    if name == "margin":
        indices = make_selector("margin").select(Pool(probabilities=probabilities), args.budget, rng).indices
    elif name == "coreset_blocked":
        selector = make_selector("coreset", num_blocks=args.coreset_blocks)
        indices = selector.select(Pool(embeddings=embeddings), args.budget, rng).indices
    elif name.startswith("coreset"):
        picks = args.coreset_picks or args.budget
        selector = make_selector("coreset", backend="jax" if name == "coreset_jax" else "numpy")
        indices = selector.select(Pool(embeddings=embeddings), picks, rng).indices
        record.update(picks_measured=picks, extrapolated=picks < args.budget)
    else:
        clusters = cluster_margin_clusters(
            embeddings, args.num_clusters, num_centroids=args.num_centroids, seed=args.seed
        )
        record["clustering_seconds"] = time.perf_counter() - start
        pool = Pool(probabilities=probabilities, cluster_ids=clusters)
        indices = make_selector("cluster_margin").select(pool, args.budget, rng).indices
        record.update(
            num_clusters=int(clusters.max()) + 1, clusters_in_selection=int(len(np.unique(clusters[indices])))
        )
    record["seconds"] = time.perf_counter() - start
    record["distinct_indices"] = int(len(np.unique(indices)))
    return record


def child_main(args: argparse.Namespace) -> None:
    """Loads the pool saved by the parent, runs one selector and prints its record as JSON."""
    embeddings = np.load(Path(args.data_dir) / "embeddings.npy")
    probabilities = np.load(Path(args.data_dir) / "probabilities.npy")
    baseline, cpu_start = _rss_gb(), _cpu_seconds()
    record = run_selector(args.child, args, embeddings, probabilities)
    record["cpu_seconds"] = _cpu_seconds() - cpu_start
    if record.get("extrapolated"):
        scale = args.budget / record["picks_measured"]
        record.update(measured_seconds=record["seconds"], measured_cpu_seconds=record["cpu_seconds"])
        record.update(seconds=record["seconds"] * scale, cpu_seconds=record["cpu_seconds"] * scale)
    record.update(rss_before_gb=baseline, peak_rss_gb=_peak_rss_gb())
    print(json.dumps(record))


# ----------------------------------------------------------------------------------------------
# Parent: data, children, report.


def child_env(threads: int) -> dict[str, str]:
    """The environment of a child limited to `threads` BLAS/OpenMP threads and CPU-only JAX."""
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "XLA_CPU_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_child(name: str, argv: Sequence[str], data_dir: str, threads: int) -> dict[str, Any]:
    """Runs one selector in a child process pinned to `threads` CPUs and returns its record."""
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    command = [sys.executable, __file__, *argv, "--child", name, "--data_dir", data_dir]
    result = subprocess.run(
        command,
        env=child_env(threads),
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    if result.returncode != 0:
        raise RuntimeError(f"{name} child failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def markdown(report: dict[str, Any]) -> str:
    """The results table with the configuration and the target."""
    from littlehelp.benchmark import header_markdown  # not in the children: JAX would count in their memory

    cfg = report["config"]
    lines = [
        "# Selection benchmark",
        "",
        header_markdown(report),
        "",
        f"Select {cfg['budget']:,} from a {cfg['pool_size']:,} x {cfg['dim']} Gaussian mixture "
        f"({cfg['components']} components, seed {cfg['seed']}), {cfg['threads']} threads. Peak RSS includes the pool "
        "(embeddings + probabilities) and the interpreter; 'RSS before' is that baseline. CPU s is "
        "user + system time of the selecting process (all its threads); on a shared machine wall "
        "time can exceed it.",
        "",
        "| selector | wall s | CPU s | clustering wall s | peak RSS GB | RSS before GB | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        note = (
            f"extrapolated from {r['picks_measured']:,} greedy picks in {r['measured_seconds']:.1f} s"
            if r.get("extrapolated")
            else ""
        )
        if "num_clusters" in r:
            note = f"{r['num_clusters']} clusters, {r['clusters_in_selection']} in the selection"
        clustering = f"{r['clustering_seconds']:.1f}" if "clustering_seconds" in r else ""
        lines.append(
            f"| {r['selector']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {clustering} | "
            f"{r['peak_rss_gb']:.2f} | "
            f"{r['rss_before_gb']:.2f} | {note} |"
        )
    lines += ["", f"Target: Cluster-Margin under 120 s and 8 GB including clustering: {report['target']}.", ""]
    return "\n".join(lines)


def target_verdict(results: list[dict[str, Any]]) -> str:
    """'met' / 'not met' with the Cluster-Margin numbers, or 'not run'."""
    cm = next((r for r in results if r["selector"] == "cluster_margin"), None)
    if cm is None:
        return "not run"
    met = cm["seconds"] < 120 and cm["peak_rss_gb"] < 8
    return f"{'met' if met else 'NOT met'} ({cm['seconds']:.1f} s, {cm['peak_rss_gb']:.2f} GB)"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Generates the pool, runs every selector in a child process and writes JSON and markdown."""
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return {}
    from littlehelp.benchmark import Benchmark  # not in the children: JAX would count in their memory

    argv = list(sys.argv[1:] if argv is None else argv)
    bench = Benchmark(__file__, argv, args.out_dir)
    with tempfile.TemporaryDirectory() as data_dir:
        embeddings, probabilities = synthetic_pool(args)
        np.save(Path(data_dir) / "embeddings.npy", embeddings)
        np.save(Path(data_dir) / "probabilities.npy", probabilities)
        del embeddings, probabilities
        results = []
        for name in args.selectors:
            results.append(run_child(name, argv, data_dir, args.threads))
            print(json.dumps(results[-1]), flush=True)
    config = {k: v for k, v in vars(args).items() if k not in ("child", "data_dir")}
    report = bench.report(config, results=results, target=target_verdict(results))
    bench.write(report, markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
