"""Plans pod memory ahead of time: T5 v1.1 XXL pre-training and SpacTor-Large, each compiled with
`littlehelp compile` for a 256-chip TPU v5p slice (v5p-512) with FSDP, and whether each train step
fits in a v5p chip's 95 GB.

    .venv/bin/pip install -c constraints.txt -e '.[tpu_aot]'   # libtpu: the TPU compiler
    .venv/bin/python scripts/plan_pod_memory.py                # tens of minutes on 2 CPU cores
    .venv/bin/python scripts/plan_pod_memory.py --only spactor_large

Each plan runs `littlehelp compile ... --out=<work_dir>/<name>.json` in its own process; a plan whose
JSON is already in --work_dir is reused (delete it to plan again). Writes results/aot_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from littlehelp.benchmark import write_report  # noqa: E402

XXL = [
    "--gin_file=models/t5_1_1/xxl.gin",
    "--gin_file=runs/pretrain.gin",
    "--gin.TASK='c4_span_corruption'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 114}",
    "--gin.TRAIN_STEPS=524288",
    "--gin.BATCH_SIZE=2048",
]  # T5's pre-training batch: 2048 sequences of 512 tokens
REMAT_BF16 = ["--gin.t5.T5Config.dtype='bfloat16'", "--gin.t5.T5Config.remat_policy='full'"]
# name -> (what it is, littlehelp compile arguments)
PLANS = {
    "t5_1_1_xxl": (
        "T5 v1.1 XXL pre-training, batch 2048 x 512/114, gin defaults (float32 activations, no remat)",
        [*XXL, "--mesh=1x256x1"],
    ),
    "t5_1_1_xxl_remat_bf16": (
        "the same with bfloat16 activations and full remat",
        [*XXL, *REMAT_BF16, "--mesh=1x256x1"],
    ),
    # The gin file's batch of 128 does not divide over 256 devices: 256, one sequence per chip.
    "spactor_large": (
        "SpacTor-Large (T5 v1.1 large, hybrid then span corruption), batch 256 x 512/114, gin defaults",
        ["--gin_file=spactor/t5_1_1_large.gin", "--gin.BATCH_SIZE=256", "--mesh=1x256x1"],
    ),
}
TOPOLOGY = "v5p-512"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "aot"))
    parser.add_argument("--out_dir", default=str(REPO / "results"))
    parser.add_argument("--only", nargs="*", choices=sorted(PLANS), help="plan these only")
    return parser.parse_args(argv)


def plan(name: str, arguments: list[str], work_dir: Path) -> dict:
    """The JSON plan of one configuration: reused from work_dir, else `littlehelp compile` in a new process
    (exit status 1, a step that does not fit, still writes it)."""
    path = work_dir / f"{name}.json"
    if not path.exists():
        command = [
            str(REPO / ".venv" / "bin" / "littlehelp"),
            "compile",
            *arguments,
            f"--topology={TOPOLOGY}",
            f"--gin.MODEL_DIR={work_dir / name}",
            f"--out={path}",
        ]
        start = time.perf_counter()
        finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        if finished.returncode not in (0, 1) or not path.exists():
            sys.exit(f"{name}: littlehelp compile failed ({finished.returncode}):\n{finished.stderr[-3000:]}")
        print(f"{name}: planned in {time.perf_counter() - start:.0f}s", flush=True)
    else:
        print(f"{name}: {path} is there, reused", flush=True)
    return json.loads(path.read_text())


def markdown(plans: dict[str, dict]) -> str:
    """The report: one row per compiled step, then the largest buffers of each step that does not fit."""
    lines = [
        f"# Pod memory planned ahead of time (`littlehelp compile --topology={TOPOLOGY}`)",
        "",
        "Per-device bytes of each train step from the TPU compiler's `memory_analysis()`, compiled on a "
        "CPU host for the 256 chips of a TPU v5p-512 slice; limit 95 GB (a v5p chip's HBM). Total = "
        "arguments + outputs - aliased (the donated state) + temporaries + code. XLA's FLOPs count a "
        "scanned (while-loop) layer stack's body once; the model's count is the objective's own. Collectives "
        "are the ops so named in the optimized program's text: the XXL programs name no all-gather, so "
        "the TPU compiler carries FSDP's parameter gathers under other ops there (not broken down here).",
        "",
        "| configuration | step | mesh (data x fsdp x tensor) | arguments GB | temporaries GB | total GB | "
        "fits 95 GB | "
        "XLA FLOPs/device | model FLOPs/device | collectives | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, found in plans.items():
        mesh = "x".join(str(found["mesh"][a]) for a in ("data", "fsdp", "tensor"))
        for step in found["steps"]:
            memory = step["memory"]
            fits = "yes" if memory["total"] <= found["memory_limit_bytes"] else "**no**"
            lines.append(
                f"| {name} | {step['objective']} | {mesh} | {memory['arguments'] / 1e9:.2f} | "
                f"{memory['temporaries'] / 1e9:.2f} | {memory['total'] / 1e9:.2f} | {fits} | "
                f"{step['flops_per_device']:.3g} | {step['model_flops_per_device']:.3g} | "
                f"{', '.join(f'{k} {v}' for k, v in step['collectives'].items())} | {step['compile_seconds']:.0f} |"
            )
    lines += ["", "Configurations:", ""] + [f"- `{name}`: {PLANS[name][0]}." for name in plans]
    for name, found in plans.items():
        for step in found["steps"]:
            if step["memory"]["total"] > found["memory_limit_bytes"]:
                lines += ["", f"Largest buffers of `{name}` / {step['objective']} (does not fit):", ""]
                lines += [
                    f"- {kind} `{e['name']}` {e['shape']}: {e['bytes'] / 1e9:.2f} GB"
                    for kind, key in (("value", "largest_values"), ("state", "largest_state_arrays"))
                    for e in step[key][:3]
                ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Plans every configuration (or --only these) and writes the report."""
    args = parse_args(argv)
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    names = args.only or list(PLANS)
    plans = {name: plan(name, PLANS[name][1], work_dir) for name in names}
    report = {
        "topology": TOPOLOGY,
        "plans": {
            name: {"configuration": PLANS[name][0], "arguments": PLANS[name][1], **found}
            for name, found in plans.items()
        },
    }
    write_report(args.out_dir, "aot_memory", report, markdown(plans))


if __name__ == "__main__":
    main()
