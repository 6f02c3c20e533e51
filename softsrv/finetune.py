"""SoftSRV's fine-tune measure: how well a small decoder fine-tuned on a set of examples models the real
held-out examples (`softsrv/gin/softsrv/finetune.gin`; every set gets the same steps, batch and learning rate).

`finetune_nll` fine-tunes from a pre-trained small decoder (or from scratch) on a file of examples (a
synthetic set, or the real training examples: the upper reference) and returns the run's final
validation cross-entropy on EVAL_FILE; `untuned_nll` is the same evaluation of the starting model (the
lower reference). Both read and write only their own run folder. `finetune_nll` trains with
`littlehelp.launch.train`: a folder that holds its final step is reused, and one fine-tuned with other
settings (another file, another step count) is refused by name.
"""

from __future__ import annotations

from pathlib import Path

from littlehelp import checkpoints, config, launch, metrics

GIN_FILE = "softsrv/finetune.gin"


def _bindings(train_file: str | Path, eval_file: str | Path, initial: str | Path | None) -> list[str]:
    """The data and starting-point bindings, as `NAME=VALUE`."""
    initial_path = "None" if initial is None else f"'{initial}'"
    return [f"TRAIN_FILE='{train_file}'", f"EVAL_FILE='{eval_file}'", f"INITIAL_CHECKPOINT_PATH={initial_path}"]


def _gin_overrides(overrides: list[str] | None) -> list[str]:
    """`--gin.NAME=VALUE` (or `--gin.NAME VALUE`) arguments as `NAME=VALUE`; anything else is refused."""
    rest, bindings = config.split_overrides(overrides or [])
    if rest:
        raise config.ConfigError(f"fine-tune override '{rest[0]}' must look like --gin.NAME=VALUE")
    return bindings


def _start_step(initial: str | Path | None) -> int:
    """The step fine-tuning counts on from: the initial checkpoint's newest (0 from scratch)."""
    if initial is None:
        return 0
    folder = Path(initial)
    steps = checkpoints.finished_steps(folder / "checkpoints" if (folder / "checkpoints").is_dir() else folder)
    return steps[-1] if steps else int(folder.name)


def _final_cross_entropy(model_dir: Path) -> float:
    records = [r for r in metrics.read_jsonl(model_dir / "metrics.jsonl") if "eval/cross_entropy" in r]
    return records[-1]["eval/cross_entropy"]


def finetune_nll(
    train_file: str | Path,
    eval_file: str | Path,
    model_dir: str | Path,
    steps: int,
    initial: str | Path | None = None,
    overrides: list[str] | None = None,
) -> float:
    """Mean NLL per token on `eval_file` after `steps` steps of fine-tuning on `train_file` into `model_dir`."""
    model_dir = Path(model_dir)
    result = launch.train(
        GIN_FILE,
        [
            *_bindings(train_file, eval_file, initial),
            f"TRAIN_STEPS={_start_step(initial) + steps}",
            *_gin_overrides(overrides),
        ],
        model_dir,
    )
    launch.require_finished(result)
    return _final_cross_entropy(model_dir)


def untuned_nll(
    eval_file: str | Path, model_dir: str | Path, initial: str | Path, overrides: list[str] | None = None
) -> float:
    """Mean NLL per token on `eval_file` of the starting model itself (its metrics go to `model_dir`)."""
    model_dir = Path(model_dir)
    launch.evaluate(
        [GIN_FILE, "runs/eval.gin"],
        [*_bindings(eval_file, eval_file, initial), "EVAL_BATCHES=1000", *_gin_overrides(overrides)],
        model_dir,
    )
    return _final_cross_entropy(model_dir)
