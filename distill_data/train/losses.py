"""Distillation losses on logits: pure functions, one per paper, plus a name registry.

Shapes: student logits ``s`` are ``(B, K)``; teacher logits ``t`` are ``(B, K)`` or, for
an ensemble, a list of ``(B, K)`` tensors whose target is the mean of the teachers'
tempered softmax outputs (:func:`multi_teacher_target`); labels ``y`` are ``(B,)``
class indices.

The teacher is a fixed target: its logits (and feature maps, and soft targets) are
detached here, so a teacher forward pass that happened to record a graph never receives
gradients from the student's loss.

All KL terms are reduced ``batchmean``: summed over classes, averaged over the batch —
the value of the divergence per sample. ``reduction="mean"`` (PyTorch's default for
``F.kl_div``) averages over ``B·K`` elements instead and so divides the loss, and its
gradient, by the number of classes K.

:data:`KD_LOSSES` and :func:`kd_loss` give the trainer one call for every method:
``kd_loss(name, s, t, y, temperature, **opts)`` returns the whole loss the student
minimises.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distill_data.errors import ConfigError

#: Teacher logits: one ``(B, K)`` tensor, or one per teacher of an ensemble.
Teacher = Tensor | Sequence[Tensor]

KL_REDUCTIONS = ("batchmean", "official")


# --------------------------------------------------------------------------- checks


def _check_temperature(temperature: float) -> float:
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ConfigError(f"temperature must be a positive number, got {temperature!r}")
    return float(temperature)


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be a number from 0 to 1, got {alpha!r}")
    return float(alpha)


def _check_student(s: Tensor) -> None:
    if not isinstance(s, Tensor) or s.dim() != 2 or not s.is_floating_point():
        shape = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
        raise ConfigError(f"student logits must be a float tensor of shape (B, K), got {shape}")


def _check_same_shape(s: Tensor, other: Tensor, what: str) -> None:
    if not isinstance(other, Tensor) or other.shape != s.shape:
        shape = tuple(other.shape) if isinstance(other, Tensor) else type(other).__name__
        raise ConfigError(
            f"{what} must have the student logits' shape {tuple(s.shape)}, got {shape} "
            "(do teacher and student predict the same classes?)"
        )


def _check_labels(s: Tensor, y: Tensor | None) -> Tensor:
    if y is None:
        raise ConfigError("labels are required when the loss has a cross-entropy term")
    if (
        not isinstance(y, Tensor)
        or y.dim() != 1
        or y.shape[0] != s.shape[0]
        or y.is_floating_point()
        or y.is_complex()
        or y.dtype == torch.bool
    ):
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ConfigError(f"labels must be an integer tensor of shape ({s.shape[0]},), got {shape}")
    return y


def _teacher_list(teacher_logits: Sequence[Tensor]) -> list[Tensor]:
    if isinstance(teacher_logits, Tensor) or not isinstance(teacher_logits, (list, tuple)):
        raise ConfigError(
            "teacher_logits must be a list of (B, K) tensors, one per teacher, "
            f"got {type(teacher_logits).__name__}"
        )
    if not teacher_logits:
        raise ConfigError("teacher_logits is empty: give at least one teacher's logits")
    return list(teacher_logits)


def _teacher_log_probs(s: Tensor, t: Teacher, temperature: float) -> Tensor:
    """log q: the log of the (ensemble-mean) tempered teacher softmax, detached."""
    if isinstance(t, Tensor):
        _check_same_shape(s, t, "teacher logits")
        return F.log_softmax(t.detach() / temperature, dim=1)
    teachers = _teacher_list(t)
    for m, tm in enumerate(teachers):
        _check_same_shape(s, tm, f"teacher {m}'s logits")
    logs = torch.stack([F.log_softmax(tm.detach() / temperature, dim=1) for tm in teachers])
    # log of the mean of the probabilities, without leaving log space
    return torch.logsumexp(logs, dim=0) - math.log(len(teachers))


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p ‖ q)`` per row, ``Σ_k p_k (log p_k − log q_k)``, shape ``(B,)``."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)


def _entropy_rows(log_p: Tensor) -> Tensor:
    return -(log_p.exp() * log_p).sum(dim=1)


# --------------------------------------------------------------------------- losses


def hinton_kd(s: Tensor, t: Teacher, temperature: float = 4.0, t2: bool = True) -> Tensor:
    """Soft-target distillation loss ``T² · KL(softmax(t/T) ‖ softmax(s/T))``.

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (arXiv
    1503.02531, 2015): eq. 1 is the tempered softmax ``q_i = exp(z_i/T) / Σ_j exp(z_j/T)``;
    §2 matches the student's tempered softmax to the teacher's and multiplies the
    soft-target term by ``T²`` because its gradients scale as ``1/T²`` (§2; gradient eq. 2),
    which keeps the term's weight roughly unchanged when T changes. The cross-entropy to
    the teacher differs from this KL only by the teacher's entropy, a constant.

    Reduction is ``batchmean`` (sum over the K classes, mean over the B samples), the
    per-sample KL divergence. The common bug — ``F.kl_div(..., reduction="mean")`` —
    averages over all ``B·K`` elements and so silently divides the loss and its gradient
    by K (10× on CIFAR-10, 1000× on ImageNet), which shifts any balance against a
    cross-entropy term. Default ``T = 4``: the value the distillation literature's CIFAR
    baselines use (e.g. CRD's ``DistillKL``; the zero-shot QAT recipe in the
    :func:`feature_mse` reference).

    Args:
        s: Student logits ``(B, K)``.
        t: Teacher logits ``(B, K)``, or a list of them (target = mean of the teachers'
            tempered softmax, :func:`multi_teacher_target`). Detached.
        temperature: Softmax temperature ``T > 0``.
        t2: multiply by ``T²`` (Hinton's scaling); ``False`` gives the plain KL that
            SRe2L's and INFER's students train with.

    Returns:
        Scalar loss; 0 when student and teacher logits are equal.
    """
    _check_student(s)
    temp = _check_temperature(temperature)
    log_q = _teacher_log_probs(s, t, temp)
    log_p = F.log_softmax(s / temp, dim=1)
    # F.kl_div's batchmean: the evaluation protocol's arithmetic since the first
    # release, so stored results reproduce bit for bit
    kl = F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)
    return kl * (temp * temp) if t2 else kl


def polino_kd(
    s: Tensor,
    t: Teacher,
    y: Tensor,
    temperature: float = 2.0,
    alpha: float = 0.7,
    kl_reduction: str = "batchmean",
) -> Tensor:
    """Quantized-distillation loss ``α · T² · KL(q ‖ p) + (1 − α) · CE(s, y)``.

    Polino, Pascanu & Alistarh, "Model compression via distillation and quantization"
    (ICLR 2018), §2 (the distillation loss that quantized distillation, Alg. 1, trains
    with) and its official code ``antspy/quantized_distillation``,
    ``cnn_models/help_fun.py`` (``weight_teacher_loss = 0.7`` hard-coded,
    ``temperature_distillation = 2``, T² applied): q and p are the teacher's and the
    student's softmax at temperature T.

    Paper and code disagree on the KL reduction, so it is an option. The code's
    ``nn.KLDivLoss()`` under PyTorch 0.3 defaults to ``size_average=True``: the mean
    over all ``B·K`` elements, i.e. the per-sample KL divided by K. The default here is
    ``"batchmean"`` (the per-sample KL, as the loss is written); ``"official"``
    reproduces the code's numbers, with a KD term K times smaller. CE is the batch mean.

    Args:
        s: Student logits ``(B, K)``.
        t: Teacher logits ``(B, K)`` or a list of them. Detached.
        y: Integer class labels ``(B,)``.
        temperature: Softmax temperature ``T > 0`` (paper/code: 2).
        alpha: Weight of the distillation term, in [0, 1] (paper/code: 0.7).
        kl_reduction: ``"batchmean"`` (default) or ``"official"`` (mean over B·K).

    Returns:
        Scalar loss.
    """
    _check_student(s)
    temp = _check_temperature(temperature)
    a = _check_alpha(alpha)
    y = _check_labels(s, y)
    if kl_reduction not in KL_REDUCTIONS:
        raise ConfigError(
            f"kl_reduction must be one of {', '.join(KL_REDUCTIONS)}, got {kl_reduction!r}"
        )
    log_q = _teacher_log_probs(s, t, temp)
    kl = _kl_rows(log_q, F.log_softmax(s / temp, dim=1)).mean()
    if kl_reduction == "official":
        kl = kl / s.shape[1]
    return a * (temp * temp) * kl + (1.0 - a) * F.cross_entropy(s, y)


def bdkd_weights(
    s: Tensor, t: Teacher, temperature: float = 4.0, sharpness: float = math.inf
) -> Tensor:
    """Per-sample weight ``w_i`` of the reverse KL in :func:`bdkd` (forward KL: ``1 − w_i``).

    ``w_i = σ(κ · (H(p_i) − H(q_i)))`` with the entropies of the student's (p) and
    teacher's (q) tempered softmax and ``κ`` = ``sharpness``; ``κ = ∞`` gives the hard
    switch ``w_i = 1[H(p_i) > H(q_i)]`` (``1/2`` on a tie), ``κ = 0`` gives ``1/2``.
    Computed without gradient. UNVERIFIED reading of BD-KD; see :func:`bdkd`.

    Returns:
        Tensor ``(B,)`` of weights in [0, 1].
    """
    _check_student(s)
    temp = _check_temperature(temperature)
    if (
        isinstance(sharpness, bool)
        or not isinstance(sharpness, (int, float))
        or not (sharpness >= 0)
    ):
        raise ConfigError(f"sharpness must be a number >= 0 (or inf), got {sharpness!r}")
    with torch.no_grad():
        log_q = _teacher_log_probs(s, t, temp)
        log_p = F.log_softmax(s.detach() / temp, dim=1)
        gap = _entropy_rows(log_p) - _entropy_rows(log_q)
        if math.isinf(sharpness):
            return torch.heaviside(gap, gap.new_tensor(0.5))
        return torch.sigmoid(sharpness * gap)


def bdkd(s: Tensor, t: Teacher, temperature: float = 4.0, sharpness: float = math.inf) -> Tensor:
    """BD-KD-style loss: per-sample mix of forward and reverse KL set by the entropy gap.

    Amara, Sepahvand, Meyer, Gross & Clark, "BD-KD: Balancing the Divergences for Online
    Knowledge Distillation" (arXiv 2212.12965). What the paper's abstract and summaries
    establish: the student's distillation loss is a *sample-wise weighted* sum of the
    forward KL ``KL(q ‖ p)`` and the reverse KL ``KL(p ‖ q)``, the weights set by the gap
    between the teacher's and the student's entropies, aiming at accuracy and
    calibration. The exact weighting (the method section's equations) could NOT be read from
    any stored source and no official code exists, so this implements the following
    reading, **unverified against the paper**::

        w_i  = 1[H(p_i) > H(q_i)]   (default κ = ∞; σ(κ·(H(p_i) − H(q_i))) for finite κ)
        loss = T² · mean_i [(1 − w_i) · KL(q_i ‖ p_i) + w_i · KL(p_i ‖ q_i)]

    with p, q the student's and teacher's softmax at temperature T and the weights held
    constant (no gradient, :func:`bdkd_weights`). Rationale: reverse
    KL is mode-seeking (it sharpens the student toward the teacher's mode), forward KL
    is mass-covering (it spreads the student over the teacher's support). A student
    less confident than its teacher on a sample (``H(p) > H(q)``) gets mostly reverse
    KL; an over-confident one gets mostly forward KL, which softens it — the calibration
    argument of the paper. Special cases: ``κ = 0`` gives
    ``T²/2 · (KL(q‖p) + KL(p‖q))`` (half the Jeffreys divergence); ``κ = ∞`` gives the
    hard switch (pure reverse KL where the student is flatter, pure forward KL —
    :func:`hinton_kd` — where it is sharper); equal entropies give equal weights.
    The hard switch is the default because it does not depend on the scale of the gap:
    at the usual temperatures (T = 4) tempered softmaxes are near-uniform, entropy gaps
    are a few thousandths of a nat, and a sigmoid with κ ≈ 1 would give every sample
    weights ≈ 1/2, i.e. collapse to the symmetric mix.

    BD-KD is an *online* method (teacher trained with the student) and also changes the
    teacher's loss; distill-data's teachers are frozen, so only the student's term is
    implemented here. Default ``T = 4`` as :func:`hinton_kd` (the paper's T unverified).

    Args:
        s: Student logits ``(B, K)``.
        t: Teacher logits ``(B, K)`` or a list of them. Detached.
        temperature: Softmax temperature ``T > 0``.
        sharpness: ``κ ≥ 0`` of the sigmoid weighting; ``inf`` (default) = hard switch.

    Returns:
        Scalar loss; 0 when student and teacher logits are equal.
    """
    w = bdkd_weights(s, t, temperature, sharpness)
    temp = float(temperature)
    log_q = _teacher_log_probs(s, t, temp)
    log_p = F.log_softmax(s / temp, dim=1)
    forward = _kl_rows(log_q, log_p)
    reverse = _kl_rows(log_p, log_q)
    return ((1.0 - w) * forward + w * reverse).mean() * (temp * temp)


def multi_teacher_target(teacher_logits: Sequence[Tensor], temperature: float = 1.0) -> Tensor:
    """Ensemble soft target: the mean of the teachers' softmax outputs, ``(B, K)``.

    Shen & Savvides, "MEAL V2: Boosting Vanilla ResNet-50 to 80%+ Top-1 Accuracy on
    ImageNet without Tricks" (arXiv 2009.08453, 2020), method section: the teachers'
    predictions are averaged as probabilities, ``q = (1/M) Σ_m softmax(z_m / T)`` — not
    the softmax of the averaged logits (official code ``szq0214/MEAL-V2``,
    ``extensions/teacher_wrapper.py``, which uses T = 1). Detached.

    Args:
        teacher_logits: List of M ≥ 1 teacher logit tensors, all ``(B, K)``.
        temperature: Softmax temperature ``T > 0`` (MEAL V2: 1).

    Returns:
        Probabilities ``(B, K)``; each row sums to 1.
    """
    teachers = _teacher_list(teacher_logits)
    temp = _check_temperature(temperature)
    first = teachers[0]
    if not isinstance(first, Tensor) or first.dim() != 2 or not first.is_floating_point():
        shape = tuple(first.shape) if isinstance(first, Tensor) else type(first).__name__
        raise ConfigError(f"teacher 0's logits must be a float tensor (B, K), got {shape}")
    for m, tm in enumerate(teachers[1:], start=1):
        _check_same_shape(first, tm, f"teacher {m}'s logits")
    return torch.stack([F.softmax(tm.detach() / temp, dim=1) for tm in teachers]).mean(dim=0)


def soft_ce(s: Tensor, probs: Tensor, temperature: float = 1.0) -> Tensor:
    """Soft cross-entropy ``−(1/B) Σ_i Σ_k q_ik · log softmax(s_i / T)_k``.

    MEAL V2 (Shen & Savvides, 2020, method section; official code ``extensions/kd_loss.py``,
    ``KLLoss``): the student is trained on the ensemble target q of
    :func:`multi_teacher_target` with this loss alone — no hard-label term, no T²
    factor (T = 1) — and here without MEAL V2's logit discriminator. It equals
    ``KL(q ‖ p)`` plus the entropy of q, a constant, so its gradient is the KL's.
    Callers using ``T ≠ 1`` who want Hinton's scaling multiply by ``T²`` themselves.

    Args:
        s: Student logits ``(B, K)``.
        probs: Target probabilities ``(B, K)`` (rows summing to 1). Detached.
        temperature: Softmax temperature ``T > 0`` applied to the student.

    Returns:
        Scalar loss.
    """
    _check_student(s)
    temp = _check_temperature(temperature)
    _check_same_shape(s, probs, "target probabilities")
    return -(probs.detach() * F.log_softmax(s / temp, dim=1)).sum(dim=1).mean()


def feature_mse(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """Mean over layers of the mean-squared error between matching feature maps.

    The feature term of task-specific zero-shot QAT (arXiv 2507.16782, ICCV 2025, Stage
    II loss ``w_ori·L_task + w_kd·L_KD + w_mse·L_MSE``; official code
    ``DFQ-Dojo/dfq-toolkit``, ``mse.py``): ``L_MSE = (1/L) Σ_l mean((F_S^l − F_T^l)²)``,
    no normalisation, over the outputs of matching layers (their default: every Conv2d
    and BatchNorm2d) of a student that shares the teacher's architecture. Teacher
    features are detached.

    Args:
        student_feats: L ≥ 1 student feature tensors.
        teacher_feats: L teacher feature tensors, shapes equal to the student's.

    Returns:
        Scalar loss.
    """
    for name, feats in (("student_feats", student_feats), ("teacher_feats", teacher_feats)):
        if isinstance(feats, Tensor) or not isinstance(feats, (list, tuple)):
            raise ConfigError(f"{name} must be a list of tensors, one per layer")
    if not student_feats:
        raise ConfigError("feature_mse needs at least one layer's features, got none")
    if len(student_feats) != len(teacher_feats):
        raise ConfigError(
            f"student and teacher give different numbers of feature maps "
            f"({len(student_feats)} vs {len(teacher_feats)}); hook the same layers in both"
        )
    for i, (fs, ft) in enumerate(zip(student_feats, teacher_feats)):
        if fs.shape != ft.shape:
            raise ConfigError(
                f"feature map {i}: student shape {tuple(fs.shape)} differs from the "
                f"teacher's {tuple(ft.shape)}; feature_mse needs matching architectures"
            )
    losses = [F.mse_loss(fs, ft.detach()) for fs, ft in zip(student_feats, teacher_feats)]
    return torch.stack(losses).mean()


# --------------------------------------------------------------------------- registry


def _hinton(
    s: Tensor,
    t: Teacher,
    y: Tensor | None,
    temperature: float,
    *,
    alpha: float = 1.0,
    t2: bool = True,
):
    """Hinton et al. 2015: ``α · T²·KL + (1 − α) · CE`` (§2's weighted average)."""
    a = _check_alpha(alpha)
    kd = hinton_kd(s, t, temperature, t2)
    return kd if a == 1.0 else a * kd + (1.0 - a) * F.cross_entropy(s, _check_labels(s, y))


def _polino(
    s: Tensor,
    t: Teacher,
    y: Tensor | None,
    temperature: float,
    *,
    alpha: float = 0.7,
    kl_reduction: str = "batchmean",
):
    """Polino et al. 2018: ``α · T²·KL + (1 − α) · CE``, α = 0.7."""
    return polino_kd(s, t, y, temperature, alpha=alpha, kl_reduction=kl_reduction)


def _bdkd(
    s: Tensor,
    t: Teacher,
    y: Tensor | None,
    temperature: float,
    *,
    alpha: float = 1.0,
    sharpness: float = math.inf,
):
    """BD-KD-style entropy-gap mix of forward/reverse KL (unverified weighting)."""
    a = _check_alpha(alpha)
    kd = bdkd(s, t, temperature, sharpness)
    return kd if a == 1.0 else a * kd + (1.0 - a) * F.cross_entropy(s, _check_labels(s, y))


def _none(s: Tensor, t: Teacher | None, y: Tensor | None, temperature: float | None):
    """No teacher: cross-entropy on the labels."""
    _check_student(s)
    return F.cross_entropy(s, _check_labels(s, y))


#: Name -> ``fn(s, t, y, temperature, **opts)`` returning the whole student loss.
KD_LOSSES: dict[str, Callable[..., Tensor]] = {
    "hinton": _hinton,
    "polino": _polino,
    "bdkd": _bdkd,
    "none": _none,
}

#: Each method's paper default temperature (used when ``kd_loss`` gets ``None``).
DEFAULT_TEMPERATURES: dict[str, float | None] = {
    "hinton": 4.0,
    "polino": 2.0,
    "bdkd": 4.0,
    "none": None,
}


def kd_options(name: str) -> dict[str, object]:
    """The options a KD loss accepts, with their defaults (raises on an unknown name)."""
    fn = _lookup(name)
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _lookup(name: str) -> Callable[..., Tensor]:
    try:
        return KD_LOSSES[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown KD loss {name!r}; choose from: {', '.join(sorted(KD_LOSSES))}"
        ) from None


def kd_loss(
    name: str,
    s: Tensor,
    t: Teacher | None,
    y: Tensor | None,
    temperature: float | None = None,
    **opts: object,
) -> Tensor:
    """The student's loss for distillation method ``name`` (one of :data:`KD_LOSSES`).

    ``hinton`` (``alpha=1``: soft targets only), ``polino`` (``alpha=0.7``,
    ``kl_reduction``), ``bdkd`` (``alpha=1``, ``sharpness``) and ``none`` (plain
    cross-entropy, teacher ignored). ``alpha < 1`` mixes in ``(1 − α)·CE(s, y)``.

    Args:
        name: Method name.
        s: Student logits ``(B, K)``.
        t: Teacher logits ``(B, K)``, a list of them, or ``None`` for ``"none"``.
        y: Labels ``(B,)``; may be ``None`` when the loss has no cross-entropy term.
        temperature: ``None`` for the method's paper default (:data:`DEFAULT_TEMPERATURES`).
        **opts: Method options (see :func:`kd_options`).

    Raises:
        ConfigError: Unknown name or option, or invalid values.
    """
    fn = _lookup(name)
    valid = kd_options(name)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        choices = ", ".join(valid) if valid else "none"
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for KD loss {name!r}; valid: {choices}"
        )
    if temperature is None:
        temperature = DEFAULT_TEMPERATURES[name]
    if name != "none" and t is None:
        raise ConfigError(f"KD loss {name!r} needs teacher logits; use 'none' to train without")
    return fn(s, t, y, temperature, **opts)
