"""`python -m softsrv.run`: SoftSRV on any files of examples, with no per-domain code.

    python -m softsrv.run --train_file=T --validation_file=V --method=mlp --out=DIR [--test_file=X
        --finetune_steps=N --steps=N --num_samples=N --max_new_tokens=N --temperature=T --shots=K
        --instruction_file=F --seed=S --gin.NAME=VALUE ...]

Three files of examples, which must be disjoint (two that share an example are refused, by name, before
any model is read): TRAIN_FILE is the sample of the target distribution the method is given (soft
prompts train on it and take their contexts from it; few-shot prompts show its examples),
VALIDATION_FILE the real examples MAUVE compares the samples with, TEST_FILE the real examples the
fine-tune NLL is measured on. Methods `nsp`, `mpk`, `mlp` train a soft prompt (`littlehelp.launch.train`
of softsrv/<method>.gin into DIR/run, its held-out loss on VALIDATION_FILE logged; a run that holds its
last step is reused, one built with other settings is refused) and then sample once per context vector
z of a training example (seeded random orders of all of them, each used once before any twice);
`zero_shot` and `few_shot` (--shots random training examples in each prompt) sample after a hard
prompt, the instruction of --instruction_file (say, one written for the domain) or a generic one, with
the same sampling settings. Writes DIR/samples.jsonl (one {"text"} per sample), DIR/mauve.json (MAUVE
of the samples against VALIDATION_FILE on MiniLM features, `softsrv.mauve`, over --mauve_seeds) and
DIR/summary.json; below `mauve.MIN_RELIABLE_SAMPLES` samples or validation examples, a warning that MAUVE
is unreliable follows the printed score and goes into both files. With --finetune_steps N a small decoder
is then fine-tuned N steps on the samples (`softsrv.finetune`, from --finetune_from or from scratch) and
its NLL on TEST_FILE goes into the summary.
Bad input ends the command in one line on stderr naming the culprit, with the error's exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gin

from littlehelp import config, launch
from littlehelp.data import pretrained
from littlehelp.embed import SentenceEmbedder
from littlehelp.errors import exit_on_error
from softsrv import finetune, generate, mauve, synthesis
from softsrv.data import check_disjoint, read_examples
from softsrv.synthesis import HARD, SOFT


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """(flags, gin overrides as `NAME=VALUE`)."""
    rest, overrides = config.split_overrides(sys.argv[1:] if argv is None else list(argv))
    parser = argparse.ArgumentParser(prog="python -m softsrv.run", description=__doc__.split("\n")[0])
    parser.add_argument("--train_file", required=True, help="the examples the method is given")
    parser.add_argument("--validation_file", required=True, help="the real examples MAUVE compares with")
    parser.add_argument("--test_file", help="the real examples the fine-tune NLL is measured on")
    parser.add_argument("--method", required=True, choices=SOFT + HARD)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=200, help="prompt training steps (soft methods)")
    parser.add_argument("--num_samples", type=int, default=128)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--shots", type=int, default=3, help="training examples in each few-shot prompt")
    parser.add_argument("--instruction_file", help="the hard prompts' instruction (default: a generic one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mauve_seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--finetune_steps",
        type=int,
        default=0,
        help="fine-tune a small decoder on the samples this many steps (0: not) and report its NLL on --test_file",
    )
    parser.add_argument("--finetune_from", help="the pre-trained small decoder's run folder (default: from scratch)")
    parser.add_argument(
        "--finetune_binding",
        action="append",
        default=[],
        help="NAME=VALUE gin binding for the fine-tune run (softsrv/finetune.gin), repeatable",
    )
    args = parser.parse_args(rest)
    if args.finetune_steps and not args.test_file:
        parser.error("--finetune_steps needs --test_file (the real examples the fine-tune NLL is measured on)")
    return args, overrides


def read_instruction(path: str | None) -> str:
    """The instruction in `path` (surrounding whitespace dropped), or the generic one; an unreadable or
    empty file is refused by name."""
    if path is None:
        return generate.GENERIC_INSTRUCTION
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise config.ConfigError(f"cannot read the instruction from {path}: {type(error).__name__}: {error}") from None
    if not text:
        raise config.ConfigError(f"{path} holds no instruction (it is blank)")
    return text


def read_inputs(args: argparse.Namespace) -> tuple[list[str], list[str], str]:
    """(training examples, validation examples, instruction): every file read and the example files
    checked disjoint, so that bad input is refused before any model loads."""
    paths = [args.train_file, args.validation_file, *([args.test_file] if args.test_file else [])]
    files = [(path, read_examples(path)) for path in paths]
    check_disjoint(files)
    return files[0][1], files[1][1], read_instruction(args.instruction_file)


def gin_arguments(args: argparse.Namespace, overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(gin files, bindings) of the method (hard prompts read nsp.gin for the models and the data)."""
    method = args.method if args.method in SOFT else "nsp"
    bindings = [
        f"MODEL_DIR='{Path(args.out).resolve() / 'run'}'",
        f"TRAIN_FILE='{args.train_file}'",
        f"EVAL_FILE='{args.validation_file}'",
        f"TRAIN_STEPS={args.steps}",
        *overrides,
    ]
    return [f"softsrv/{method}.gin"], bindings


def train_prompt(files: Sequence[str], bindings: Sequence[str], run: Path) -> dict[str, float]:
    """Trains the soft prompt into `run` unless it holds its last step; the run's last logged train and
    eval metrics (`train/NAME`, `eval/NAME`)."""
    result = launch.train(files, bindings, run)
    launch.require_finished(result)
    return {
        **{f"train/{k}": v for k, v in result.train_metrics.items()},
        **{f"eval/{k}": v for k, v in result.eval_metrics.items()},
    }


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command (see the module docstring); returns the summary it writes."""
    args, overrides = parse_args(argv)
    launch.set_up_logging()
    started, out = time.perf_counter(), Path(args.out).resolve()
    train_texts, real, instruction = read_inputs(args)  # bad input refused first
    files, bindings = gin_arguments(args, overrides)
    trained = train_prompt(files, bindings, out / "run") if args.method in SOFT else {}
    config.import_configurable_modules(["softsrv.synthesis"])
    knobs = dict(
        method=args.method,
        num_samples=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        shots=args.shots,
        seed=args.seed,
    )
    config.parse_gin(files, bindings)
    try:
        samples = synthesis.synthesize(**knobs, train_texts=train_texts, instruction=instruction)
    finally:
        gin.clear_config()
    scored = score(samples, real, args.mauve_seeds)
    summary = {
        **knobs,
        "instruction": instruction,
        "train_file": args.train_file,
        "validation_file": args.validation_file,
        "test_file": args.test_file,
        "steps": args.steps,
        "final_train_loss": trained.get("train/loss"),
        "final_eval_loss": trained.get("eval/loss"),
        "mauve_mean": scored["mean"],
        "mauve_std": scored["std"],
        "mauve_warning": scored.get("warning"),
        "seconds": time.perf_counter() - started,
    }
    write_outputs(out, samples, scored, summary)
    if args.finetune_steps:
        summary["finetune_nll"] = finetune.finetune_nll(
            out / "samples.jsonl",
            args.test_file,
            out / "finetune",
            args.finetune_steps,
            args.finetune_from,
            [f"--gin.{b}" for b in args.finetune_binding],
        )
        write_outputs(out, samples, scored, summary)
    return summary


def score(samples: Sequence[str], real: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """MAUVE of the samples against the real examples on MiniLM features (`mauve.mauve_of_texts`), with a
    "warning" when either side is too small for the score to mean much (`mauve.small_sample_warning`)."""
    scored = mauve.mauve_of_texts(samples, real, SentenceEmbedder.load(pretrained.ensure("minilm_l6")), seeds=seeds)
    warning = mauve.small_sample_warning(len(real), len(samples))
    return {**scored, "warning": warning} if warning else scored


def write_outputs(out: Path, samples: Sequence[str], scored: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
    """DIR/samples.jsonl, DIR/mauve.json and DIR/summary.json."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in samples), encoding="utf-8")
    (out / "mauve.json").write_text(json.dumps(scored, indent=1, default=float) + "\n", encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"{len(samples)} samples, MAUVE {summary['mauve_mean']:.3f} ± {summary['mauve_std']:.3f}: {out}", flush=True)
    if summary["mauve_warning"]:
        print(f"warning: {summary['mauve_warning']}", flush=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command's entry point: `run`, with bad input (a `LittlehelpError`) printed as one line on stderr
    and the process exiting with the error's exit code."""
    with exit_on_error("softsrv.run"):
        return run(argv)


if __name__ == "__main__":
    main()
