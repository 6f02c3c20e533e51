"""Sentence-embedding benchmark: sentences/s of `SentenceEmbedder` (all-MiniLM-L6-v2) on this machine.

Real sentences (lines of the Shakespeare validation split with at least 3 words) are embedded at each
batch size: one untimed first call (compiling every length bucket it meets; its time is reported
apart), then `--repeats` timed calls, each followed by HF transformers doing the same job on the same
sentences (its own tokenizer, length-sorted batches padded to their longest, masked mean, L2
normalisation: sentence-transformers' recipe; one untimed first call too) with torch's CPU threads.
Tokenising is inside both timings. Load averages and the float32 matmul rate are measured in the same run.

    python scripts/bench_embed.py                     # 1,500 sentences at batch 32 and 128 (about 1-2 minutes)
    python scripts/bench_embed.py --sentences 200 --batch_sizes 16 --repeats 1 --no_hf
writes results/bench_embed.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from littlehelp.benchmark import Benchmark, header_markdown, seconds_of  # noqa: E402
from littlehelp.data import pretrained as pretrained_files  # noqa: E402
from littlehelp.data.corpus import shakespeare_documents  # noqa: E402
from littlehelp.embed import SentenceEmbedder  # noqa: E402
from littlehelp.models.bert import bert_forward_flops  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--repeats", type=int, default=2, help="timed calls of ours per batch size")
    parser.add_argument("--hf_repeats", type=int, default=1, help="timed HF calls, after ours in the first repeats")
    parser.add_argument("--hf_warmup", type=int, default=64, help="sentences of HF's untimed first call")
    parser.add_argument("--no_hf", action="store_true", help="skip HF transformers' timing")
    parser.add_argument("--matmul_sizes", nargs="+", type=int, default=[1024, 2048])
    parser.add_argument("--matmul_repeats", type=int, default=5)
    parser.add_argument("--out_dir", default=str(REPO / "results"))
    return parser.parse_args(argv)


def sentences(count: int) -> list[str]:
    """The first `count` lines of at least 3 words of the Shakespeare validation split."""
    lines = (line.strip() for document in shakespeare_documents("validation") for line in document.splitlines())
    chosen = [line for line in lines if len(line.split()) >= 3][:count]
    if len(chosen) < count:
        raise SystemExit(f"the validation split has only {len(chosen)} lines of 3+ words")
    return chosen


def padded_work(embedder: SentenceEmbedder, texts: list[str]) -> dict[str, float]:
    """Tokens, padded positions, buckets used and forward FLOPs of the padded batches of `texts`."""
    ids = embedder.tokenize(texts)
    shapes = [tokens.shape for _, tokens, _ in embedder.batches(ids)]
    config = embedder.config
    return {
        "tokens": sum(map(len, ids)),
        "padded_positions": sum(b * length for b, length in shapes),
        "batches": len(shapes),
        "buckets": sorted({length for _, length in shapes}),
        "forward_flops": sum(bert_forward_flops(config, b, length, with_mlm_head=False) for b, length in shapes),
    }


def hf_embedder(folder: Path, batch_size: int):
    """sentence-transformers' recipe over HF transformers: texts -> [n, d] numpy."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()

    def embed(texts: list[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), model.config.hidden_size), np.float32)
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            inputs = tokenizer([texts[i] for i in chosen], padding=True, truncation=True, return_tensors="pt")
            with torch.no_grad():
                hidden = model(**inputs).last_hidden_state
            mask = inputs["attention_mask"][..., None].float()
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[chosen] = torch.nn.functional.normalize(mean, p=2, dim=1).numpy()
        return out

    return embed


def measure(
    base: SentenceEmbedder, folder: Path, texts: list[str], batch_size: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One batch size: first call, then timed calls of ours and (interleaved) HF's; agreement."""
    embedder = SentenceEmbedder(base.pretrained, base.tokenizer, base.max_length, batch_size)
    first_seconds, ours = seconds_of(lambda: embedder.embed(texts))
    hf = None if args.no_hf or not args.hf_repeats else hf_embedder(folder, batch_size)
    hf_first_seconds = None if hf is None else seconds_of(lambda: hf(texts[: args.hf_warmup]))[0]
    seconds: dict[str, list[float]] = {"ours": [], "hf": []}
    for repeat in range(args.repeats):
        seconds["ours"].append(seconds_of(lambda: embedder.embed(texts))[0])
        if hf is not None and repeat < args.hf_repeats:
            hf_seconds, reference = seconds_of(lambda: hf(texts))
            seconds["hf"].append(hf_seconds)
    work = padded_work(embedder, texts)
    record = {
        "batch_size": batch_size,
        "sentences": len(texts),
        **work,
        "first_call_seconds": first_seconds,
        "compiles": embedder._embed._cache_size(),
        "seconds": seconds["ours"],
        "median_seconds": statistics.median(seconds["ours"]),
    }
    record["compile_seconds_estimate"] = first_seconds - record["median_seconds"]
    record["sentences_per_second"] = len(texts) / record["median_seconds"]
    record["flops_per_second"] = work["forward_flops"] / record["median_seconds"]
    if hf is not None:
        record.update(
            hf_first_call_seconds=hf_first_seconds,
            hf_seconds=seconds["hf"],
            hf_median_seconds=statistics.median(seconds["hf"]),
            hf_sentences_per_second=len(texts) / statistics.median(seconds["hf"]),
            max_abs_diff_vs_hf=float(np.max(np.abs(ours - reference))),
        )
    print(
        f"batch {batch_size}: {record['sentences_per_second']:.0f} sentences/s (first call {first_seconds:.1f} s)"
        + (f", HF {record['hf_sentences_per_second']:.0f}/s" if hf is not None else ""),
        flush=True,
    )
    return record


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark and writes the JSON and Markdown reports; returns the JSON content."""
    import torch

    args = parse_args(argv)
    folder = pretrained_files.ensure("minilm_l6")
    bench = Benchmark(__file__, argv, args.out_dir, args.matmul_sizes, args.matmul_repeats)
    base, texts = SentenceEmbedder.load(folder), sentences(args.sentences)
    results = [measure(base, folder, texts, batch_size, args) for batch_size in args.batch_sizes]
    report = bench.report(
        vars(args),
        torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(),
        model="all-MiniLM-L6-v2",
        max_length=base.max_length,
        length_buckets=list(base.buckets),
        results=results,
    )
    bench.write(report, markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report: set-up, load, matmul rate, one row per batch size."""
    first = report["results"][0]
    lines = [
        "# Sentence-embedding benchmark: SentenceEmbedder (all-MiniLM-L6-v2)",
        "",
        header_markdown(report) + _load_note(report),
        "",
        f"torch {report['torch_version']} ({report['torch_threads']} threads). {first['sentences']} Shakespeare "
        f"validation lines, {first['tokens']} tokens with [CLS]/[SEP]; length buckets {report['length_buckets']}.",
        "",
        "| batch | sentences/s | median s | all s | first call s (compile + run) | compiles | buckets used "
        "| padded / real tokens | GFLOP/s | HF sentences/s | HF median s | max abs diff vs HF |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        hf = (
            f"{r['hf_sentences_per_second']:.0f} | {r['hf_median_seconds']:.2f} | {r['max_abs_diff_vs_hf']:.1e}"
            if "hf_median_seconds" in r
            else "- | - | -"
        )
        lines.append(
            f"| {r['batch_size']} | {r['sentences_per_second']:.0f} | {r['median_seconds']:.2f} | "
            f"{', '.join(f'{s:.2f}' for s in r['seconds'])} | {r['first_call_seconds']:.1f} | {r['compiles']} | "
            f"{r['buckets']} | {r['padded_positions'] / r['tokens']:.2f} | {r['flops_per_second'] / 1e9:.1f} | {hf} |"
        )
    lines += [
        "",
        "Timed calls include tokenising; HF's first call (untimed) embeds the first "
        f"{report['config']['hf_warmup']} sentences only; ours pads each length-sorted batch to a bucket "
        "and to the full "
        "batch size (the last batch too), HF pads each batch to its longest text. GFLOP/s counts the padded "
        "forward pass (littlehelp/flops.py's convention). Each timed HF call runs right after one of ours.",
        "",
    ]
    return "\n".join(lines)


def _load_note(report: dict[str, Any]) -> str:
    """A warning when other work held the cores (a 1-minute load above the CPU count)."""
    busiest = max(report[when]["load"]["load_average"][0] for when in ("before", "after"))
    if busiest <= report["machine"]["cpu_count"]:
        return ""
    return (
        f" The 1-minute load reached {busiest:.1f} on {report['machine']['cpu_count']} CPUs: other jobs shared "
        "the machine, so every rate here (ours, HF's and the matmul rate) is below an idle machine's."
    )


if __name__ == "__main__":
    main()
