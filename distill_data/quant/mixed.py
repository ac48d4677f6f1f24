"""Mixed-precision weight bits: ZeroQ's Pareto frontier (Cai et al., "ZeroQ: A Novel
Zero Shot Quantization Framework", CVPR 2020, §3.3), and Polino's gradient-norm
allocation for comparison.

ZeroQ measures the *sensitivity* of layer ``i`` at ``k`` bits on the calibration images
(ZeroQ's Distilled Data), Eq. 5:

    Ω_i(k) = (1/N) Σ_j KL( M(θ; x_j) ‖ M(θ̃_i(k); x_j) ),

the float network against itself with only layer ``i``'s weights quantized to ``k``
bits; assumes the sensitivities add up (Eq. 6: ``Ω_sum = Σ_i Ω_i(k_i)``); and picks, for
a size budget, the bit assignment minimising ``Ω_sum`` among those within it: the
Pareto frontier of total sensitivity against size, found here exactly by dynamic
programming over the layers (each state a reachable size, keeping for each the least
sensitivity; dominated states pruned). The authors never released this half; the
choices that are ours: weights per-channel symmetric (as the rest of this package), the
first and last layer held at ``first_last_bits`` and outside the search (as the uniform
baselines they are compared with), sizes counted in weight bits of the searched layers
(``average bits`` = Σ n_i·k_i / Σ n_i).

``polino_bits``: Polino et al. (ICLR 2018, §3) give each layer bits in proportion to the
norm of its loss gradient (:func:`~distill_data.quant.fakequant.allocate_bits`, the
official rule: half of each layer's bits kept as a floor, the total preserved), here
with the gradient of the KL to the float network's own predictions on the calibration
images, as no labels are needed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill_data.errors import ConfigError
from distill_data.quant.ptq import model_logits
from distill_data.quant.quantizers import check_bits, weight_fake_quant


@dataclass(frozen=True)
class Assignment:
    """One point of the frontier: bits per layer, their weight size and sensitivity."""

    bits: dict[str, int]
    size_bits: int
    sensitivity: float
    average_bits: float


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module, calib: Tensor, layers: list[str], bit_options: tuple[int, ...]
) -> dict[str, dict[int, float]]:
    """``Ω_i(k)`` for every layer named in ``layers`` and every ``k`` (ZeroQ Eq. 5): the
    mean KL of the float network's softmax to the one with only that layer's weights
    quantized. ``model`` is a float network in eval mode (the folded one); each layer's
    weights are put back after it is measured."""
    ref = F.log_softmax(model_logits(model, calib), 1)
    mods = _layers(model)
    out: dict[str, dict[int, float]] = {}
    for name in layers:
        layer = mods[name]
        keep = layer.weight.detach().clone()
        out[name] = {}
        for k in bit_options:
            layer.weight.copy_(weight_fake_quant(keep, k))
            q = F.log_softmax(model_logits(model, calib), 1)
            kl = F.kl_div(q, ref, log_target=True, reduction="batchmean")
            out[name][k] = max(float(kl), 0.0)
            layer.weight.copy_(keep)
    return out


def pareto_frontier(sens: dict[str, dict[int, float]], sizes: dict[str, int]) -> list[Assignment]:
    """Every assignment on the frontier of total sensitivity against weight size, in
    increasing size (each point the least total sensitivity at or below its size).

    Exact dynamic programming: after layer ``i`` the states are the reachable sizes of
    layers ``1..i``, each with the least sensitivity reaching it; a state is dropped
    when a smaller one is at least as good (it can never be on the frontier).
    """
    names = list(sens)
    total = sum(sizes[n] for n in names)
    if not names:
        raise ConfigError("no layer to assign bits to")
    states: dict[int, tuple[float, tuple[int, ...]]] = {0: (0.0, ())}
    for name in names:
        nxt: dict[int, tuple[float, tuple[int, ...]]] = {}
        for size, (omega, picks) in states.items():
            for k, o in sens[name].items():
                s, w = size + sizes[name] * k, omega + o
                if s not in nxt or w < nxt[s][0]:
                    nxt[s] = (w, picks + (k,))
        pruned, best = {}, math.inf
        for s in sorted(nxt):
            if nxt[s][0] < best:
                best = nxt[s][0]
                pruned[s] = nxt[s]
        states = pruned
    return [
        Assignment(dict(zip(names, picks)), s, w, s / total)
        for s, (w, picks) in sorted(states.items())
    ]


def choose(frontier: list[Assignment], average_bits: float) -> Assignment:
    """The least-sensitive frontier point whose average bits are at most ``average_bits``.

    Raises:
        ConfigError: no assignment is that small (below the smallest bit option).
    """
    fits = [a for a in frontier if a.average_bits <= average_bits + 1e-9]
    if not fits:
        low = min(a.average_bits for a in frontier)
        raise ConfigError(
            f"mixed precision at {average_bits:g} average bits is unreachable: the smallest "
            f"assignment averages {low:g} bits"
        )
    return min(fits, key=lambda a: (a.sensitivity, a.size_bits))


def brute_force(sens: dict[str, dict[int, float]], sizes: dict[str, int]) -> list[Assignment]:
    """The frontier by enumerating every assignment (tests; tiny networks only)."""
    import itertools

    names = list(sens)
    total = sum(sizes[n] for n in names)
    best: dict[int, tuple[float, tuple[int, ...]]] = {}
    for picks in itertools.product(*(sorted(sens[n]) for n in names)):
        s = sum(sizes[n] * k for n, k in zip(names, picks))
        w = sum(sens[n][k] for n, k in zip(names, picks))
        if s not in best or w < best[s][0]:
            best[s] = (w, picks)
    out, low = [], math.inf
    for s in sorted(best):
        if best[s][0] < low:
            low = best[s][0]
            out.append(Assignment(dict(zip(names, best[s][1])), s, best[s][0], s / total))
    return out


def gradient_norms(
    model: nn.Module, calib: Tensor, layers: list[str], batch: int = 64
) -> list[float]:
    """‖∂KL/∂W_i‖ for each layer: the network's KL to its own (detached) predictions on
    the calibration images, after quantizing all of them at 4 bits (a gradient of zero
    at the float optimum would say nothing)."""
    mods = _layers(model)
    keep = {n: mods[n].weight.detach().clone() for n in layers}
    ref = F.softmax(model_logits(model, calib), 1)
    grads = {n: torch.zeros_like(keep[n]) for n in layers}
    try:
        with torch.no_grad():
            for n in layers:
                mods[n].weight.copy_(weight_fake_quant(keep[n], 4))
        device = next(model.parameters()).device
        for i in range(0, len(calib), batch):
            out = F.log_softmax(model(calib[i : i + batch].to(device)), 1)
            loss = F.kl_div(out, ref[i : i + batch].to(out.device), reduction="sum") / len(calib)
            g = torch.autograd.grad(loss, [mods[n].weight for n in layers])
            for n, gi in zip(layers, g):
                grads[n] += gi
    finally:
        with torch.no_grad():
            for n in layers:
                mods[n].weight.copy_(keep[n])
    return [float(grads[n].norm()) for n in layers]


def polino_bits(model: nn.Module, calib: Tensor, layers: list[str], bits: int) -> dict[str, int]:
    """Polino's allocation: every layer starts at ``bits``, then bits move to the layers
    of larger gradient norm, the number of bits summed over layers preserved."""
    from distill_data.quant.fakequant import allocate_bits

    norms = gradient_norms(model, calib, layers)
    alloc = allocate_bits(norms, bits, unit="bits")
    return {n: int(min(max(b, 2), 8)) for n, b in zip(layers, alloc)}


def parse_bit_options(spec: str | tuple | list) -> tuple[int, ...]:
    """``"2,4,8"`` → ``(2, 4, 8)`` (each 2-8, at least two)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        opts = tuple(sorted({check_bits(int(v), "mixed-precision bits") for v in items}))
    except ValueError:
        raise ConfigError(f"mixed-precision bits must look like '2,4,8', got {spec!r}") from None
    if len(opts) < 2:
        raise ConfigError(f"mixed precision needs at least two bit widths, got {spec!r}")
    return opts


def save_frontier_plot(
    frontier: list[Assignment], chosen: Assignment | None, path: str | os.PathLike,
    uniform: dict[int, tuple[float, float]] | None = None,
) -> None:  # fmt: skip
    """A PNG of the frontier: average bits (x) against total sensitivity (y, log scale),
    the chosen point ringed, uniform assignments as squares. Drawn with Pillow."""
    from PIL import Image, ImageDraw

    from distill_data.store import atomic_write

    w, h, m = 640, 420, 60
    pts = [(a.average_bits, a.sensitivity) for a in frontier]
    extra = list((uniform or {}).values())
    xs = [p[0] for p in pts + extra]
    ys = [math.log10(max(p[1], 1e-12)) for p in pts + extra]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def at(x: float, y: float) -> tuple[float, float]:
        ly = math.log10(max(y, 1e-12))
        return (m + (x - x0) / (x1 - x0) * (w - 2 * m), h - m - (ly - y0) / (y1 - y0) * (h - 2 * m))

    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.line([(m, m), (m, h - m), (w - m, h - m)], fill="black")
    d.text((w // 2 - 60, h - m + 25), "average weight bits", fill="black")
    d.text((5, m - 40), "total sensitivity (sum of KL, log scale)", fill="black")
    for k in range(5):
        xv = x0 + (x1 - x0) * k / 4
        px = m + (w - 2 * m) * k / 4
        d.line([(px, h - m), (px, h - m + 5)], fill="black")
        d.text((px - 10, h - m + 8), f"{xv:.2f}", fill="black")
        yv = y0 + (y1 - y0) * k / 4
        py = h - m - (h - 2 * m) * k / 4
        d.line([(m - 5, py), (m, py)], fill="black")
        d.text((2, py - 6), f"1e{yv:.1f}", fill="black")
    line = [at(*p) for p in pts]
    if len(line) > 1:
        d.line(line, fill=(40, 90, 200), width=2)
    for x, y in line:
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(40, 90, 200))
    for k, (ab, om) in (uniform or {}).items():
        x, y = at(ab, om)
        d.rectangle([x - 5, y - 5, x + 5, y + 5], outline=(200, 60, 40), width=2)
        d.text((x + 7, y - 14), f"uniform {k}", fill=(200, 60, 40))
    if chosen is not None:
        x, y = at(chosen.average_bits, chosen.sensitivity)
        d.ellipse([x - 8, y - 8, x + 8, y + 8], outline=(0, 150, 0), width=2)
        d.text((x + 10, y + 4), f"chosen ({chosen.average_bits:.2f} bits)", fill=(0, 150, 0))
    with atomic_write(path) as tmp:
        img.save(tmp, format="PNG")


def assign_bits(folded: nn.Module, calib: Tensor, layers: list[str], cfg) -> dict:
    """Weight bits for ``layers`` of the folded float network by ``cfg.mp_method`` at
    ``cfg.mixed_precision`` average bits; the report of the choice (with the frontier and
    the uniform assignments' points for ZeroQ)."""
    opts = parse_bit_options(cfg.mp_bits)
    mods = _layers(folded)
    sizes = {n: mods[n].weight.numel() for n in layers}
    total = sum(sizes.values())
    sens = layer_sensitivity(folded, calib, layers, opts)
    uniform = {k: (float(k), sum(sens[n][k] for n in layers)) for k in opts}
    frontier = pareto_frontier(sens, sizes)
    if cfg.mp_method == "zeroq":
        pick = choose(frontier, cfg.mixed_precision)
        bits = pick.bits
    else:
        # any integer width 2-8 (Polino's rule moves single bits, not ``mp_bits``' steps)
        bits = polino_bits(folded, calib, layers, round(cfg.mixed_precision))
    size = sum(sizes[n] * bits[n] for n in layers)
    return {
        "method": cfg.mp_method,
        "target_average_bits": cfg.mixed_precision,
        "bit_options": list(opts),
        "bits": bits,
        "average_bits": size / total,
        "size_bits": size,
        "sensitivity": (
            sum(sens[n][bits[n]] for n in layers)
            if all(bits[n] in sens[n] for n in layers)
            else None
        ),  # fmt: skip
        "layer_sensitivity": {n: {str(k): v for k, v in sens[n].items()} for n in layers},
        "uniform": {str(k): {"average_bits": a, "sensitivity": o} for k, (a, o) in uniform.items()},
        "frontier": [[round(a.average_bits, 4), a.sensitivity] for a in frontier],
    }


def plot_report(mixed: dict, path: str | os.PathLike) -> None:
    """:func:`save_frontier_plot` from the ``mixed_precision_result`` of a report."""
    frontier = [Assignment({}, 0, o, a) for a, o in mixed["frontier"]]
    chosen = (
        Assignment({}, 0, mixed["sensitivity"], mixed["average_bits"])
        if mixed["sensitivity"] is not None
        else None
    )
    uniform = {int(k): (v["average_bits"], v["sensitivity"]) for k, v in mixed["uniform"].items()}
    save_frontier_plot(frontier, chosen, path, uniform)
