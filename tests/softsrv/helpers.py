"""Tiny frozen models at the real vocabularies' sizes, and files of examples, for SoftSRV's CLI tests."""

import json
from pathlib import Path

from littlehelp.models import BertConfig, DecoderConfig, build_model
from littlehelp.models.convert.run_folder import converted
from tests.helpers import random_params, save_params_only

TEXTS = [
    "def add(a, b): return a + b",
    "print('hello')",
    "x = [i * i for i in range(3)]",
    "import os",
    "while True: break",
]
VALIDATION = ["y = 2 ** 10", "print(len('abc'))", "for c in 'xy': pass", "import sys"]
TEST = ["z = {1: 'one'}", "assert 1 < 2", "del x", "raise SystemExit"]
LM_SIZES = {"emb_dim": 16, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "head_dim": 8, "mlp_dim": 32}
EMBEDDER_SIZES = {"emb_dim": 12, "num_layers": 1, "num_heads": 2, "mlp_dim": 24}


def tiny_setup(folder: Path) -> list[str]:
    """Writes a tiny LM (SmolLM2's vocabulary), a tiny embedder (MiniLM's) and three disjoint files of
    examples, train.txt (TEXTS), validation.jsonl and test.txt, into `folder`; returns the gin overrides
    (`--gin.NAME=VALUE`) that point softsrv/*.gin at them."""
    lm = build_model(DecoderConfig(vocab_size=49152, tie_embeddings=True, **LM_SIZES))
    embedder = build_model(BertConfig(vocab_size=30522, max_position_embeddings=512, **EMBEDDER_SIZES))
    save_params_only(random_params(lm, 0), folder / "lm")
    save_params_only(random_params(embedder, 1), folder / "embedder")
    (folder / "train.txt").write_text("\n".join(TEXTS))
    (folder / "validation.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in VALIDATION))
    (folder / "test.txt").write_text("\n".join(TEST))
    sizes = [f"--gin.lm/decoder.DecoderConfig.{k}={v}" for k, v in LM_SIZES.items()]
    sizes += [f"--gin.embedder/bert.BertConfig.{k}={v}" for k, v in EMBEDDER_SIZES.items()]
    return [
        f"--gin.LM_DIR='{folder / 'lm'}'",
        f"--gin.EMBEDDER_DIR='{folder / 'embedder'}'",
        f"--gin.convert.folder_vocabulary.model_dir='{converted('smollm2_135m')}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 16}",
        "--gin.BATCH_SIZE=2",
        "--gin.PROMPT_LENGTH=2",
        "--gin.softsrv.MLPPrompt.width=16",
        "--gin.softsrv.MLPPrompt.hidden=8",
        "--gin.softsrv.NonContextualPrompt.width=16",
        "--gin.trainer.train.eval_batches=1",
        "--gin.trainer.train.log_every=1",
        "--gin.trainer.train.peak_flops_per_device=1e9",
        "--gin.partitioning.MeshConfig.data=1",
        *sizes,
    ]
