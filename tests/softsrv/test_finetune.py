"""SoftSRV's fine-tune measure: the untuned NLL is the float64 NLL of the starting model on the held-out
examples (each with its EOS), and fine-tuning on those examples lowers it; neither writes outside its
own run folder."""

import jax.numpy as jnp
import numpy as np

from littlehelp.models import DecoderConfig, build_model
from littlehelp.models.convert.run_folder import converted, folder_vocabulary
from softsrv.finetune import finetune_nll, untuned_nll
from tests.helpers import random_params, save_params_only
from tests.softsrv.helpers import TEXTS

SIZES = {"emb_dim": 16, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "head_dim": 8, "mlp_dim": 32}
OVERRIDES = [
    *(f"--gin.decoder.DecoderConfig.{k}={v}" for k, v in SIZES.items()),
    "--gin.BATCH_SIZE=2",
    "--gin.TASK_FEATURE_LENGTHS={'targets': 32}",
    "--gin.partitioning.MeshConfig.data=1",
    "--gin.trainer.train.peak_flops_per_device=1e9",
    "--gin.optimizers.constant_schedule.learning_rate=0.05",
]


def test_untuned_nll_is_the_float64_nll_and_fine_tuning_on_the_examples_lowers_it(tmp_path):
    model = build_model(
        DecoderConfig(
            vocab_size=49152,
            tie_embeddings=True,
            scale_tied_logits=True,
            rope_max_wavelength=100000.0,
            norm_eps=1e-5,
            **SIZES,
        )
    )
    params = random_params(model, 0)
    save_params_only(params, tmp_path / "initial")
    (tmp_path / "eval.txt").write_text("\n".join(TEXTS))
    before = untuned_nll(tmp_path / "eval.txt", tmp_path / "untuned", tmp_path / "initial", OVERRIDES)
    vocabulary = folder_vocabulary(converted("smollm2_135m"))
    total, count = 0.0, 0
    for text in TEXTS:
        tokens = [*vocabulary.encode(text), vocabulary.eos_id]
        logits = np.asarray(
            model.logits(params, {"decoder_input_tokens": jnp.asarray([[0, *tokens[:-1]]])}), np.float64
        )
        shifted = logits[0] - logits[0].max(-1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        total -= log_p[np.arange(len(tokens)), tokens].sum()
        count += len(tokens)
    np.testing.assert_allclose(before, total / count, rtol=1e-4)
    after = finetune_nll(
        tmp_path / "eval.txt", tmp_path / "eval.txt", tmp_path / "tuned", 8, tmp_path / "initial", OVERRIDES
    )
    assert after < before - 0.5
    assert sorted(p.name for p in (tmp_path / "initial").iterdir()) == ["checkpoints"]
