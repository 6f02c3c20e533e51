"""Train-step benchmark: compile time, step time, tokens/s and MFU of the reference configurations.

Configurations and conventions follow docs/benchmarks.md: t5-bench (Adafactor) and decoder-bench
(AdamW) at batch 8 and 16, on 1 device and on 8 fake CPU devices (mesh data 4 x tensor 2). Each (config,
batch size, device count) runs in a child process of this script (XLA_FLAGS must be set before JAX
is imported); the parent measures this machine's dense float32 matmul rate before the first and after
every child, interleaved with them, records the load average each time, and writes
results/bench_train_step.{json,md}. The MFU denominator is the best rate of the run; when the rate
varies by more than --max_matmul_spread (15%) within the run the machine was not idle, and the script
refuses to write results.

    python scripts/bench_train_step.py                        # the full default run
    python scripts/bench_train_step.py --configs t5-bench --batch_sizes 16 --devices 1 --steps 5

MFU = (train FLOPs per step / median step seconds) / machine matmul FLOP/s. The fake devices of the
8-device run share the same CPU cores, so its denominator is the same whole-machine rate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from littlehelp.benchmark import Benchmark, header_markdown, repeated  # noqa: E402
from littlehelp.features import (  # noqa: E402
    DECODER_INPUT_TOKENS,
    DECODER_LOSS_WEIGHTS,
    DECODER_TARGET_TOKENS,
    ENCODER_INPUT_TOKENS,
)

MATMUL_SIZES = (2048, 4096)
MESHES = {1: (1, 1, 1), 8: (4, 1, 2)}  # devices -> (data, fsdp, tensor)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One benchmarked model: its kind, model-config fields and sequence lengths."""

    kind: str  # "t5" (Adafactor) or "decoder" (AdamW)
    model: dict[str, Any]
    inputs_length: int  # 0 for decoder-only
    targets_length: int


CONFIGS: dict[str, BenchConfig] = {
    "t5-bench": BenchConfig(
        "t5",
        dict(
            vocab_size=8192,
            emb_dim=256,
            num_heads=4,
            head_dim=64,
            mlp_dim=1024,
            num_encoder_layers=4,
            num_decoder_layers=4,
            dropout_rate=0.0,
            dtype="float32",
            scan_layers=False,
        ),
        512,
        114,
    ),
    "decoder-bench": BenchConfig(
        "decoder",
        dict(
            vocab_size=8192,
            emb_dim=256,
            num_layers=4,
            num_heads=4,
            num_kv_heads=2,
            head_dim=64,
            mlp_dim=1024,
            dtype="float32",
            scan_layers=False,
        ),
        0,
        512,
    ),
    # Tiny shapes for smoke tests only; not part of the default run.
    "t5-tiny": BenchConfig(
        "t5",
        dict(
            vocab_size=128,
            emb_dim=16,
            num_heads=2,
            head_dim=8,
            mlp_dim=32,
            num_encoder_layers=1,
            num_decoder_layers=1,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
        ),
        16,
        8,
    ),
    "decoder-tiny": BenchConfig(
        "decoder",
        dict(vocab_size=128, emb_dim=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32),
        0,
        16,
    ),
}
DEFAULT_CONFIGS = ("t5-bench", "decoder-bench")
# Layers are unrolled (scan_layers=False), the configurations' reference; scripts/bench_scan.py
# compares scanned layers and remat policies against them.


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), choices=sorted(CONFIGS))
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--devices", nargs="+", type=int, default=[1, 8], choices=sorted(MESHES))
    parser.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
    parser.add_argument(
        "--matmul_sizes",
        nargs="+",
        type=int,
        default=list(MATMUL_SIZES),
        help="float32 matmul sizes whose rate is measured before the first run and after each",
    )
    parser.add_argument("--matmul_repeats", type=int, default=7)
    parser.add_argument(
        "--max_matmul_spread",
        type=float,
        default=0.15,
        help="refuse to write results when 1 - min/max of the interleaved matmul rates exceeds this",
    )
    parser.add_argument("--out_dir", default=str(REPO / "results"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Child process: JAX with a fixed device count.


def build_objective_and_optimizer(config: BenchConfig):
    """The project's Objective and Optimizer for a benchmark configuration."""
    from littlehelp import models, objectives, optimizers
    from littlehelp.models import DecoderConfig, T5Config

    schedule = optimizers.inverse_sqrt_schedule()
    if config.kind == "t5":
        objective = objectives.EncoderDecoderObjective(models.build_model(T5Config(**config.model)), z_loss=1e-4)
        return objective, optimizers.adafactor(schedule, decay_rate=0.8, factored=True)
    objective = objectives.DecoderObjective(models.build_model(DecoderConfig(**config.model)), z_loss=1e-4)
    return objective, optimizers.adamw(schedule)


def random_batch(config: BenchConfig, batch_size: int, seed: int = 0) -> dict[str, Any]:
    """Random tokens (ids 1..vocab-1) under the real feature names; decoder inputs are shifted targets."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = config.model["vocab_size"]
    targets = rng.integers(1, vocab, (batch_size, config.targets_length), dtype=np.int32)
    batch = {
        DECODER_TARGET_TOKENS: targets,
        DECODER_INPUT_TOKENS: np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        DECODER_LOSS_WEIGHTS: np.ones_like(targets),
    }
    if config.inputs_length:
        batch[ENCODER_INPUT_TOKENS] = rng.integers(1, vocab, (batch_size, config.inputs_length), dtype=np.int32)
    return batch


@dataclasses.dataclass
class CompiledStep:
    """A benchmark's compiled train step with its state and a device-resident batch."""

    compiled: Any
    state: Any
    batch: dict[str, Any]
    spec: dict[str, Any]
    objective: Any
    devices: int
    compile_seconds: float
    metrics: Any = None  # of the last step taken


def compile_step(config: BenchConfig, batch_size: int) -> CompiledStep:
    """Builds the state and compiles the train step of `config` at `batch_size` on all visible devices."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from littlehelp import partitioning, trainer
    from littlehelp.train_state import init_state, state_layout

    objective, optimizer = build_objective_and_optimizer(config)
    devices = len(jax.devices())
    mesh = partitioning.make_mesh(partitioning.MeshConfig(*MESHES[devices]))
    rules = partitioning.DEFAULT_RULES
    host_batch = random_batch(config, batch_size)
    spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in host_batch.items()}
    example = {k: jnp.zeros((1,) + v.shape[1:], v.dtype) for k, v in host_batch.items()}
    init_params = lambda rng: objective.init_params(rng, example)  # noqa: E731
    with nn.logical_axis_rules(rules):  # no mesh set: unboxing shapes must not add constraints
        layout = state_layout(init_params, optimizer.tx, mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state = init_state(init_params, optimizer.tx, jax.random.key(0), layout)
    start = time.perf_counter()
    compiled = trainer.compile_train_step(trainer.make_train_step(objective, optimizer), layout, spec, mesh, rules)
    compile_seconds = time.perf_counter() - start
    batch = {k: jax.device_put(v, partitioning.batch_sharding(mesh)) for k, v in host_batch.items()}
    return CompiledStep(compiled, state, batch, spec, objective, devices, compile_seconds)


def bench_one(name: str, batch_size: int, steps: int, warmup: int) -> dict[str, Any]:
    """Compiles and times the train step of one (config, batch size) on all visible devices."""
    from littlehelp import trainer

    config = CONFIGS[name]
    step = compile_step(config, batch_size)
    seconds = repeated(advance(step), steps, warmup)
    flops = step.objective.train_flops(step.spec)
    step_seconds = statistics.median(seconds)
    return {
        "config": name,
        "batch_size": batch_size,
        "devices": step.devices,
        "mesh": list(MESHES[step.devices]),
        "compile_seconds": step.compile_seconds,
        "step_seconds": step_seconds,
        "step_seconds_min": min(seconds),
        "step_seconds_max": max(seconds),
        "tokens_per_second": trainer.tokens_per_batch(step.spec) / step_seconds,
        "flops_per_step": flops,
        "flops_per_second": flops / step_seconds,
        "params": _param_count(step.state.params),
        "final_loss": float(step.metrics["loss"]),
        "steps": steps,
        "warmup": warmup,
        "model_config": config.model,
    }


def advance(step: CompiledStep) -> Callable[[], Any]:
    """A call that takes one train step, keeping the new state and metrics in `step`."""
    import jax

    rng = jax.random.key(1)

    def call() -> Any:
        step.state, step.metrics = step.compiled(step.state, {}, step.batch, rng)  # no frozen models
        return step.state, step.metrics

    return call


def _param_count(params) -> int:
    import jax

    return int(sum(leaf.size for leaf in jax.tree.leaves(params)))


def run_child(args: argparse.Namespace) -> None:
    """Benchmarks every (config, batch size) on this process's devices; one JSON line per result."""
    for name in args.configs:
        for batch_size in args.batch_sizes:
            result = bench_one(name, batch_size, args.steps, args.warmup)
            print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------
# Parent process: matmul rate, children, report.


def run_devices(devices: int, name: str, batch_size: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Runs this script as a child process on `devices` fake CPU devices for one config and batch size."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}").strip()
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--configs",
        name,
        "--batch_sizes",
        str(batch_size),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    results = []
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True, cwd=REPO) as child:
        for line in child.stdout:
            if line.startswith("RESULT "):
                results.append(json.loads(line[len("RESULT ") :]))
                print(_progress_line(results[-1]), flush=True)
    if child.returncode:
        raise RuntimeError(f"benchmark child on {devices} devices failed with exit code {child.returncode}")
    return results


def _progress_line(r: dict[str, Any]) -> str:
    return (
        f"{r['config']:>14} batch {r['batch_size']:>3} devices {r['devices']}: compile {r['compile_seconds']:.1f}s "
        f"step {r['step_seconds'] * 1e3:.1f}ms  {r['tokens_per_second']:,.0f} tok/s  "
        f"{r['flops_per_second'] / 1e9:.1f} GFLOP/s"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark and writes the JSON and Markdown reports; returns the JSON content."""
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return {}
    bench = Benchmark(__file__, argv, args.out_dir, args.matmul_sizes, args.matmul_repeats, args.max_matmul_spread)
    runs = [(devices, name, batch) for devices in args.devices for name in args.configs for batch in args.batch_sizes]
    results = [r for devices, name, batch in bench.between(runs) for r in run_devices(devices, name, batch, args)]
    report = bench.report(vars(args), results=results)
    peak = max(max(check["matmul_flops_per_second"].values()) for check in bench.checks)  # the MFU denominator
    report["peak_matmul_flops_per_second"] = peak
    for r in results:
        r["mfu"] = r["flops_per_second"] / peak
    bench.write(report, markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table under its provenance and the machine's matmul rate."""
    lines = [
        "# Train-step benchmark",
        "",
        header_markdown(report),
        "",
        "The matmul rate is measured before the first run and after each. MFU denominator: "
        f"{report['peak_matmul_flops_per_second'] / 1e9:.1f} GFLOP/s (the best rate of the run, all sizes).",
        "",
        "| config | batch | devices (mesh d,f,t) | compile s | step ms (median) | tokens/s | GFLOP/step | "
        "GFLOP/s | MFU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['config']} | {r['batch_size']} | {r['devices']} ({','.join(map(str, r['mesh']))}) "
            f"| {r['compile_seconds']:.1f} | {r['step_seconds'] * 1e3:.1f} | {r['tokens_per_second']:,.0f} "
            f"| {r['flops_per_step'] / 1e9:.2f} | {r['flops_per_second'] / 1e9:.1f} | {r['mfu']:.1%} |"
        )
    lines += [
        "",
        "FLOPs per step: the objective's `train_flops` (littlehelp/flops.py: 3 x forward matmul FLOPs). "
        "Tokens: encoder + decoder positions. Step time: median of the timed steps after warm-up, "
        "each waited for with block_until_ready. The 8 fake devices share the same CPU cores, so "
        "their MFU uses the same whole-machine denominator.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
