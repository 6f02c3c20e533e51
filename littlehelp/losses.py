"""Token-level losses: cross-entropy with z-loss and the distillation divergences FKL, RKL, JSD[beta], TVD.

Every per-token function returns float32 values shaped like the logits without their vocabulary
axis ([batch, length]), already multiplied by the tokens' loss weights (0 at padding), whatever the
input dtype. `sequence_sum` / `sequence_mean` reduce them per sequence, `cross_entropy_with_z_loss`
over the whole batch. The chunked functions (`chunked_cross_entropy`, `chunked_divergence`) compute
the same per-token math from hidden states and an output head, a slice of the sequence at a time,
so that no [batch, length, vocab] logits tensor of either model is ever live;
`chunked_labels_and_divergence` mixes the two (SALT's distillation stage) in one pass, and
`chunked_token_values` maps any per-token function of the logits without a gradient path (scoring).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Head = Callable[[jax.Array], jax.Array]  # hidden chunk [b, c, d] -> logits chunk [b, c, vocab]
Divergence = Callable[[jax.Array, jax.Array, jax.Array, float], jax.Array]
DIVERGENCES = ("fkl", "rkl", "jsd", "tvd")
DEFAULT_CHUNK_SIZE = 32  # positions; a chunk holds a few [batch, chunk_size, vocab] float32 buffers


@dataclasses.dataclass(frozen=True)
class TokenLossSums:
    """Weighted sums over the tokens of a batch (divide by `weight` for means)."""

    cross_entropy: jax.Array
    z_loss: jax.Array
    correct: jax.Array
    weight: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TokenLosses:
    """Per-token values [..., length], each already multiplied by the token's loss weight."""

    cross_entropy: jax.Array
    z_loss: jax.Array
    correct: jax.Array


def token_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array, z_loss: float = 0.0) -> TokenLosses:
    """Per-token softmax cross-entropy of integer `targets` under `logits`, in float32.

    z-loss is `z_loss * log(Z)^2` per token (PaLM / t5x), which keeps the softmax normaliser near 1;
    it is only traced when `z_loss` is non-zero. `correct` is 1 where the argmax is the target.

    Args:
      logits: [..., vocab] unnormalised scores.
      targets: [...] integer token ids.
      weights: [...] per-token loss weights (0 for padding).
      z_loss: coefficient of the log-normaliser penalty.
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    z_term = z_loss * jnp.square(log_z) if z_loss else jnp.zeros_like(log_z)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return TokenLosses((log_z - target_logit) * weights, z_term * weights, correct * weights)


def token_sums(token_losses: TokenLosses, weights: jax.Array) -> TokenLossSums:
    """Batch sums of per-token losses, with the total loss weight."""
    return TokenLossSums(
        jnp.sum(token_losses.cross_entropy),
        jnp.sum(token_losses.z_loss),
        jnp.sum(token_losses.correct),
        jnp.sum(weights.astype(jnp.float32)),
    )


def cross_entropy_with_z_loss(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, z_loss: float = 0.0
) -> TokenLossSums:
    """Batch sums of `token_cross_entropy` (same arguments)."""
    return token_sums(token_cross_entropy(logits, targets, weights, z_loss), weights)


def sequence_sum(token_values: jax.Array) -> jax.Array:
    """Weighted sum over the length (last) axis of weighted per-token values: [b, l] -> [b]."""
    return jnp.sum(token_values, axis=-1)


def sequence_mean(token_values: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted mean over the length axis of weighted per-token values; 0 for an all-padding row."""
    total_weight = jnp.sum(weights.astype(jnp.float32), axis=-1)
    return sequence_sum(token_values) / jnp.where(total_weight > 0, total_weight, 1.0)


# ----------------------------------------------------------------------------------------------
# Divergences between a teacher p and a student q (docs/concepts/losses.md), per token.


def _log_probs(logits: jax.Array, temperature: float) -> jax.Array:
    """float32 log-softmax of `logits / temperature` over the vocabulary axis."""
    return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def _student_teacher(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float):
    """(log q, log p): student and (frozen, no gradient) teacher log-probabilities."""
    if not temperature > 0:
        raise ValueError(f"divergence temperature must be > 0, got {temperature}")
    return _log_probs(student_logits, temperature), _log_probs(jax.lax.stop_gradient(teacher_logits), temperature)


def _kl(log_a: jax.Array, log_b: jax.Array) -> jax.Array:
    """KL(a || b) = sum_x a(x) (log a(x) - log b(x)) over the last axis."""
    return jnp.sum(jnp.exp(log_a) * (log_a - log_b), axis=-1)


def _masked(values: jax.Array, weights: jax.Array) -> jax.Array:
    """Non-negative values times weights (float32 rounding can leave a few ulps below 0 when p ~ q)."""
    return jnp.maximum(values, 0.0) * weights.astype(jnp.float32)


def forward_kl(
    student_logits: jax.Array, teacher_logits: jax.Array, weights: jax.Array, temperature: float = 1.0
) -> jax.Array:
    """FKL = KL(p_teacher || q_student) per token, [...] (weighted; logits [..., vocab])."""
    log_q, log_p = _student_teacher(student_logits, teacher_logits, temperature)
    return _masked(_kl(log_p, log_q), weights)


def reverse_kl(
    student_logits: jax.Array, teacher_logits: jax.Array, weights: jax.Array, temperature: float = 1.0
) -> jax.Array:
    """RKL = KL(q_student || p_teacher) per token, [...] (weighted; logits [..., vocab])."""
    log_q, log_p = _student_teacher(student_logits, teacher_logits, temperature)
    return _masked(_kl(log_q, log_p), weights)


def total_variation(
    student_logits: jax.Array, teacher_logits: jax.Array, weights: jax.Array, temperature: float = 1.0
) -> jax.Array:
    """TVD = `0.5 * sum_x |p(x) - q(x)|` per token, [...] (weighted; logits [..., vocab])."""
    log_q, log_p = _student_teacher(student_logits, teacher_logits, temperature)
    return _masked(0.5 * jnp.sum(jnp.abs(jnp.exp(log_p) - jnp.exp(log_q)), axis=-1), weights)


def _check_beta(beta: float) -> None:
    """Refuses a JSD beta outside (0, 1), where the formula is identically zero."""
    if beta <= 0 or beta >= 1:
        nearest = (
            "'fkl' (JSD[beta] / beta -> KL(teacher || student) as beta -> 0)"
            if beta <= 0
            else "'rkl' (JSD[beta] / (1 - beta) -> KL(student || teacher) as beta -> 1)"
        )
        raise ValueError(
            f"jsd needs 0 < beta < 1, got beta={beta}: at beta 0 and 1 JSD[beta] is identically "
            f"zero; use kind={nearest}"
        )


def jensen_shannon(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    weights: jax.Array,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> jax.Array:
    """Generalised JSD[beta] per token (DistillSpec, arXiv 2310.08461; docs/concepts/losses.md), weighted.

        JSD[beta](p || q) = beta * KL(p || m) + (1 - beta) * KL(q || m),  m = beta * p + (1 - beta) * q,

    p the teacher, q the student, 0 < beta < 1 (beta = 0.5 is the symmetric JSD). log m is never
    formed from m: with d = log p - log q, log(m / q) = logaddexp(log beta + d, log(1 - beta)) and
    log(m / p) = logaddexp(log beta, log(1 - beta) - d) (the logsumexp of log beta + log p and
    log(1 - beta) + log q, minus log q or log p), so no log(0), and near beta 0 or 1 the small
    mixture term keeps its precision instead of cancelling two large logs.
    """
    _check_beta(beta)
    log_q, log_p = _student_teacher(student_logits, teacher_logits, temperature)
    d = log_p - log_q
    log_beta, log_rest = math.log(beta), math.log1p(-beta)
    kl_p_m = -jnp.sum(jnp.exp(log_p) * jnp.logaddexp(log_beta, log_rest - d), axis=-1)
    kl_q_m = -jnp.sum(jnp.exp(log_q) * jnp.logaddexp(log_beta + d, log_rest), axis=-1)
    return _masked(beta * kl_p_m + (1 - beta) * kl_q_m, weights)


def _divergence_fn(kind: str, beta: float) -> Divergence:
    """The per-token function of `kind` as f(student_logits, teacher_logits, weights, temperature)."""
    if kind == "jsd":
        _check_beta(beta)
        return lambda student, teacher, weights, temperature: jensen_shannon(
            student, teacher, weights, beta, temperature
        )
    functions = {"fkl": forward_kl, "rkl": reverse_kl, "tvd": total_variation}
    if kind not in functions:
        raise ValueError(f"unknown divergence kind {kind!r}; expected one of {', '.join(DIVERGENCES)}")
    return functions[kind]


def divergence(
    kind: str,
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    weights: jax.Array,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> jax.Array:
    """Per-token divergence [...] of `kind` in {"fkl", "rkl", "jsd", "tvd"} (see each function).

    Both models' logits [..., vocab] are divided by `temperature` before the softmax (no T^2
    rescaling); the teacher gets no gradient; values are float32 and multiplied by `weights`;
    `beta` is only read by "jsd".
    """
    return _divergence_fn(kind, beta)(student_logits, teacher_logits, weights, temperature)


# ----------------------------------------------------------------------------------------------
# Stored teacher labels: the top k log-probabilities and the rest of the mass as one bucket.

EMPTY_BUCKET = -1e30  # the log of a bucket with no mass: finite, so 0 * (log a - log b) stays 0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TopKLabels:
    """A teacher's distribution reduced to k + 1 buckets per token: its top k token ids [..., k] with
    their log-probabilities [..., k] (at the temperature they were made with), and the log of the mass
    on every other token [...] (`EMPTY_BUCKET` when the top k hold it all)."""

    ids: jax.Array
    log_probs: jax.Array
    log_rest: jax.Array


def _log_rest(log_probs: jax.Array, ids: jax.Array) -> jax.Array:
    """log of the mass of `log_probs` [..., vocab] outside `ids` [..., k], summed without cancellation."""
    outside = jnp.put_along_axis(log_probs, ids, -jnp.inf, axis=-1, inplace=False)
    return jnp.maximum(jax.nn.logsumexp(outside, axis=-1), EMPTY_BUCKET)


def top_k_labels(teacher_logits: jax.Array, k: int, temperature: float = 1.0) -> TopKLabels:
    """The `TopKLabels` of `teacher_logits` [..., vocab] at `temperature` (what a store keeps)."""
    if not 0 < k <= teacher_logits.shape[-1]:
        raise ValueError(f"top_k_labels: k must be in 1..{teacher_logits.shape[-1]} (the vocabulary), got {k}")
    log_p = _log_probs(jax.lax.stop_gradient(teacher_logits), temperature)
    top, ids = jax.lax.top_k(log_p, k)
    return TopKLabels(ids.astype(jnp.int32), top, _log_rest(log_p, ids))


def bucketed(labels: TopKLabels) -> jax.Array:
    """The teacher's k + 1 bucket log-probabilities [..., k + 1]: the top k, then the rest."""
    return jnp.concatenate([labels.log_probs, labels.log_rest[..., None]], axis=-1)


def student_buckets(student_logits: jax.Array, ids: jax.Array, temperature: float = 1.0) -> jax.Array:
    """The student's log-probabilities [..., k + 1] on the teacher's buckets: each of `ids`, then the rest."""
    log_q = _log_probs(student_logits, temperature)
    top = jnp.take_along_axis(log_q, ids, axis=-1)
    return jnp.concatenate([jnp.maximum(top, EMPTY_BUCKET), _log_rest(log_q, ids)[..., None]], axis=-1)


def sparse_divergence(
    kind: str,
    student_logits: jax.Array,
    labels: TopKLabels,
    weights: jax.Array,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> jax.Array:
    """Per-token divergence [...] of `kind` between stored teacher labels and the student, on k + 1
    buckets: each stored top-k token and one bucket for the rest of the vocabulary.

    The student's logits [..., vocab] are divided by `temperature` (the labels' own temperature is the
    one they were stored with). With k = vocab every divergence equals `divergence` on the full
    distributions. With k < vocab it is the divergence between the two bucketed distributions:
    FKL is KL(p || q) with the rest bucket's mass counted once, sum_i p_i log(p_i / q_i) + p_rest
    log(p_rest / q_rest); RKL, JSD and TVD likewise; each is at most the full divergence (merging
    outcomes never increases an f-divergence).
    """
    teacher = jax.lax.stop_gradient(bucketed(labels))
    return _divergence_fn(kind, beta)(student_buckets(student_logits, labels.ids, temperature), teacher, weights, 1.0)


# ----------------------------------------------------------------------------------------------
# Chunked over the sequence: hidden states + head, never the whole [b, l, vocab] logits.


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ChunkedLoss:
    """A chunked loss: `total` is differentiable, `per_token` ([b, l] values) carries no gradient."""

    total: jax.Array  # the weighted sum over every token
    per_token: Any  # jax.Array [b, l], or TokenLosses for cross-entropy


def chunked_cross_entropy(
    hidden: jax.Array,
    head: Head,
    targets: jax.Array,
    weights: jax.Array,
    z_loss: float = 0.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> ChunkedLoss:
    """`token_cross_entropy` of `head(hidden)`, `chunk_size` positions at a time.

    `total` is the weighted sum of cross-entropy + z-loss (its gradient flows to `hidden` and to the
    arrays `head` closes over, e.g. its params); `per_token` is the `TokenLosses` [b, l] (metrics,
    `token_sums(...)` gives the unchunked `cross_entropy_with_z_loss`). A length that `chunk_size`
    does not divide is padded with zero-weight positions.
    """

    def token_fn(logits, side, frozen):
        token_losses = token_cross_entropy(logits, *side, z_loss)
        return token_losses.cross_entropy + token_losses.z_loss, token_losses

    return _chunked(token_fn, hidden, head, (targets, weights), [], chunk_size)


def chunked_divergence(
    kind: str,
    student_hidden: jax.Array,
    student_head: Head,
    teacher_hidden: jax.Array,
    teacher_head: Head,
    weights: jax.Array,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> ChunkedLoss:
    """`divergence(kind, student_head(student_hidden), teacher_head(teacher_hidden), ...)` in chunks.

    The teacher is frozen: its hidden states and head get no gradient. `total` (differentiable w.r.t.
    the student's hidden states and head) is the weighted sum over tokens; `per_token` the [b, l]
    values. Hidden states are [b, l, d_student] and [b, l, d_teacher]; a length that `chunk_size`
    does not divide is padded with zero-weight positions.
    """
    token_divergence = _divergence_fn(kind, beta)
    teacher_hidden = jax.lax.stop_gradient(teacher_hidden)
    teacher_fn, teacher_consts = _convert(teacher_head, teacher_hidden, chunk_size)

    def token_fn(logits, side, frozen):
        hidden, token_weights = side
        values = token_divergence(logits, teacher_fn(hidden, *frozen), token_weights, temperature)
        return values, values

    frozen = jax.lax.stop_gradient(teacher_consts)
    return _chunked(token_fn, student_hidden, student_head, (teacher_hidden, weights), frozen, chunk_size)


def chunked_stored_divergence(
    kind: str,
    student_hidden: jax.Array,
    student_head: Head,
    labels: TopKLabels,
    weights: jax.Array,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> ChunkedLoss:
    """`chunked_divergence` with stored teacher labels ([b, l, k] / [b, l]) in place of a teacher:
    `sparse_divergence` on the k + 1 buckets, chunked over the student's head."""

    def token_fn(logits, side, frozen):
        del frozen
        token_labels, token_weights = side
        values = sparse_divergence(kind, logits, token_labels, token_weights, beta, temperature)
        return values, values

    side = (jax.lax.stop_gradient(labels), weights)
    return _chunked(token_fn, student_hidden, student_head, side, [], chunk_size)


def _mixed_token_fn(soft_fn: Callable, z_loss: float) -> Callable:
    """A chunk's (1 - mix) (cross-entropy + z-loss) + mix soft_fn(...) per token, and (hard, soft).

    The side chunk is (teacher side, targets, weights, mix); `soft_fn(logits, teacher side, frozen,
    weights)` is the weighted divergence per token."""

    def token_fn(logits, side, frozen):
        teacher, token_targets, token_weights, token_mix = side
        hard = token_cross_entropy(logits, token_targets, token_weights, z_loss)
        soft = soft_fn(logits, teacher, frozen, token_weights)
        return (1.0 - token_mix) * (hard.cross_entropy + hard.z_loss) + token_mix * soft, (hard, soft)

    return token_fn


def _mix_side(teacher: Any, targets: jax.Array, weights: jax.Array, mix: jax.Array | float) -> tuple:
    mix = jnp.broadcast_to(jax.lax.stop_gradient(jnp.asarray(mix, jnp.float32)), weights.shape)
    return (teacher, targets, weights, mix)


def chunked_labels_and_divergence(
    kind: str,
    student_hidden: jax.Array,
    student_head: Head,
    teacher_hidden: jax.Array,
    teacher_head: Head,
    targets: jax.Array,
    weights: jax.Array,
    mix: jax.Array | float,
    z_loss: float = 0.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> ChunkedLoss:
    """(1 - mix) (cross-entropy + z-loss) + mix divergence(kind) per token, one pass over each head.

    Knowledge distillation mixed with the ground truth: `mix` (a scalar or [b, l], no gradient) is the
    soft labels' share. `total` is the weighted sum over tokens (differentiable w.r.t. the student's
    hidden states and head; the teacher is frozen); `per_token` is (`TokenLosses`, divergence [b, l]),
    each weighted by `weights` alone, so their means do not depend on `mix`.
    """
    token_divergence = _divergence_fn(kind, beta)
    teacher_hidden = jax.lax.stop_gradient(teacher_hidden)
    teacher_fn, teacher_consts = _convert(teacher_head, teacher_hidden, chunk_size)

    def soft_fn(logits, hidden, frozen, token_weights):
        return token_divergence(logits, teacher_fn(hidden, *frozen), token_weights, temperature)

    side = _mix_side(teacher_hidden, targets, weights, mix)
    frozen = jax.lax.stop_gradient(teacher_consts)
    return _chunked(_mixed_token_fn(soft_fn, z_loss), student_hidden, student_head, side, frozen, chunk_size)


def chunked_labels_and_stored_divergence(
    kind: str,
    student_hidden: jax.Array,
    student_head: Head,
    labels: TopKLabels,
    targets: jax.Array,
    weights: jax.Array,
    mix: jax.Array | float,
    z_loss: float = 0.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> ChunkedLoss:
    """`chunked_labels_and_divergence` with stored teacher labels ([b, l, k] / [b, l]) in place of a
    teacher: the divergence is `sparse_divergence` on the k + 1 buckets, and no teacher runs."""

    def soft_fn(logits, token_labels, frozen, token_weights):
        del frozen
        return sparse_divergence(kind, logits, token_labels, token_weights, beta, temperature)

    side = _mix_side(jax.lax.stop_gradient(labels), targets, weights, mix)
    return _chunked(_mixed_token_fn(soft_fn, z_loss), student_hidden, student_head, side, [], chunk_size)


def _convert(head: Head, hidden: jax.Array, chunk_size: int) -> tuple[Callable, list]:
    """`head` as f(hidden chunk, *consts), the arrays it closes over hoisted out as `consts`."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk = jax.ShapeDtypeStruct((hidden.shape[0], chunk_size, *hidden.shape[2:]), hidden.dtype)
    return jax.closure_convert(head, chunk)


def _split(x: jax.Array, chunk_size: int) -> jax.Array:
    """[b, l, ...] -> [n, b, chunk_size, ...], the length zero-padded to a multiple of chunk_size."""
    padding = -x.shape[1] % chunk_size
    x = jnp.pad(x, [(0, 0), (0, padding)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(x.shape[0], -1, chunk_size, *x.shape[2:]), 1, 0)


def _merge(chunks: jax.Array, length: int) -> jax.Array:
    """Inverse of `_split`: [n, b, c, ...] -> [b, length, ...]."""
    x = jnp.moveaxis(chunks, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :length]


def _chunked(token_fn, hidden: jax.Array, head: Head, side: Any, frozen: list, chunk_size: int) -> ChunkedLoss:
    """Splits hidden states and per-token inputs into chunks and runs the fused chunk loop."""
    head_fn, head_consts = _convert(head, hidden, chunk_size)
    hidden_chunks = _split(hidden, chunk_size)
    side_chunks = jax.tree.map(lambda x: _split(x, chunk_size), side)
    total, outputs = _fused_sum(token_fn, head_fn, hidden_chunks, head_consts, side_chunks, frozen)
    per_token = jax.tree.map(lambda x: _merge(x, hidden.shape[1]), jax.lax.stop_gradient(outputs))
    return ChunkedLoss(total, per_token)


def _sum_and_outputs(token_fn, logits: jax.Array, side: Any, frozen: list) -> tuple[jax.Array, Any]:
    """A chunk's summed (weighted) values and its per-token outputs."""
    values, outputs = token_fn(logits, side, frozen)
    return jnp.sum(values), outputs


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused_sum(token_fn, head_fn, hidden_chunks, head_consts, side_chunks, frozen):
    """Sum over chunks of token_fn(head_fn(hidden chunk, *head_consts), side chunk, frozen) values.

    Without differentiation it only computes values; differentiated, `_fused_sum_fwd` takes each
    chunk's gradient while that chunk's logits are live, so the backward pass recomputes nothing.
    """

    def body(total, chunk):
        hidden, side = chunk
        value, outputs = _sum_and_outputs(token_fn, head_fn(hidden, *head_consts), side, frozen)
        return total + value, outputs

    return jax.lax.scan(body, jnp.zeros((), jnp.float32), (hidden_chunks, side_chunks))


def _fused_sum_fwd(token_fn, head_fn, hidden_chunks, head_consts, side_chunks, frozen):
    """The sum and outputs, plus residuals: d total / d hidden chunks and d total / d head_consts."""
    grad_values = jax.value_and_grad(functools.partial(_sum_and_outputs, token_fn), has_aux=True)

    def body(carry, chunk):
        total, consts_grad = carry
        hidden, side = chunk
        logits, head_vjp = jax.vjp(head_fn, hidden, *head_consts)
        (value, outputs), logits_grad = grad_values(logits, side, frozen)
        hidden_grad, *chunk_consts_grad = head_vjp(logits_grad)
        consts_grad = [g + chunk_g.astype(jnp.float32) for g, chunk_g in zip(consts_grad, chunk_consts_grad)]
        return (total + value, consts_grad), (outputs, hidden_grad)

    init = (jnp.zeros((), jnp.float32), [jnp.zeros(c.shape, jnp.float32) for c in head_consts])
    (total, consts_grad), (outputs, hidden_grad) = jax.lax.scan(body, init, (hidden_chunks, side_chunks))
    consts_grad = [g.astype(c.dtype) for g, c in zip(consts_grad, head_consts)]  # accumulated in float32
    return (total, outputs), (hidden_grad, consts_grad)


def _fused_sum_bwd(token_fn, head_fn, residuals, cotangents):
    """Scales the stored gradients by the total's cotangent (outputs carry none: see `_chunked`)."""
    del token_fn, head_fn
    hidden_grad, consts_grad = residuals
    scale = lambda g: (g * cotangents[0]).astype(g.dtype)  # noqa: E731
    return scale(hidden_grad), [scale(g) for g in consts_grad], None, None


_fused_sum.defvjp(_fused_sum_fwd, _fused_sum_bwd)


# ----------------------------------------------------------------------------------------------
# Per-token values only (scoring, metrics): chunked, no gradient path.


def chunked_token_values(
    token_fn: Callable[[jax.Array, Any], Any],
    hidden: jax.Array,
    head: Head,
    side: Any,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Any:
    """`token_fn(head(hidden chunk), side chunk)`, `chunk_size` positions at a time, merged to [b, l, ...].

    `token_fn` maps logits [b, c, vocab] and the matching chunk of `side` (a pytree of [b, l, ...]
    arrays) to a pytree of per-token values [b, c, ...]; only one chunk's logits are live at a time.
    A length that `chunk_size` does not divide is padded; the padded positions are dropped.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunks = (_split(hidden, chunk_size), jax.tree.map(lambda x: _split(x, chunk_size), side))
    outputs = jax.lax.map(lambda chunk: token_fn(head(chunk[0]), chunk[1]), chunks)
    return jax.tree.map(lambda x: _merge(x, hidden.shape[1]), outputs)
