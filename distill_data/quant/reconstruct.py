"""Reconstruction PTQ: the calibration images teach the rounding and the step sizes.

Range-only PTQ (:func:`~distill_data.quant.ptq.quantize_model` with
``method="observer"``) uses the calibration images only to set activation ranges. The
methods here go further: block by block (or layer by layer) they learn, on the
calibration set, how each weight rounds and where the quantization steps lie, so that
the quantized block reproduces the float network's output there. Every method starts
from the range-only PTQ network (round-to-nearest weights, observer ranges) and
changes only its quantizers:

``adaround`` (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training
Quantization", ICML 2020, eqs. 21-25)
    Per *layer*: each weight rounds down or up, ``W_q = s·clamp(⌊W/s⌋ + h(V))`` with the
    rectified sigmoid ``h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1)``, ζ = 1.1, γ = −0.1; ``V``
    minimises ``‖f_q(x_q) − f(x)‖² + λ Σ (1 − |2h(V) − 1|^β)`` with β annealed linearly
    from 20 to 2 after a warm-up of 20 % of the iterations in which the regulariser is
    off. Input from the quantized network, target from the float one (the paper's
    "asymmetric reconstruction", §5); activation ranges stay the observer's.
``brecq`` (Li et al., "BRECQ: Pushing the Limit of Post-Training Quantization by Block
Reconstruction", ICLR 2021, §3-4)
    The same rounding, reconstructed per *block* (a residual block; a layer where the
    network has none), and the activation steps learned with it (LSQ: the step is a
    parameter, gradients through a straight-through round), initialised by the Lp
    search (p = 2.4) of the official code. BRECQ's code learns the weights with float
    activations first and the steps in a second pass; here both are learned in one pass
    (the order QDrop's code calls ``together``), stated as our choice.
``qdrop`` (Wei et al., "QDrop: Randomly Dropping Quantization for Extremely Low-bit
Post-Training Quantization", ICLR 2022, §4, Eq. 9)
    BRECQ in which every activation element inside the block is quantized with
    probability 0.5 during reconstruction (else passed through in float), and, as the
    official code does, the block's input mixes the quantized and the float network's
    input element-wise at the same probability.
``genie`` (Genie-M: Jeon et al., "Genie: Show Me the Data for Quantization", CVPR 2023,
§3.2)
    QDrop whose per-channel weight steps are learned jointly with the rounding
    (``W_q = s·clamp(B + h(V))``, ``B = ⌊W/s₀⌋`` fixed from the initial step ``s₀``),
    ``s₀`` from a clip search minimising ``|W − q(W)|^2.4`` per channel. The official
    code's defaults: λ = 1 (the others: 0.01), Adam at lr 1e-4 for the weight steps,
    4e-5 for the activation steps (both cosine-annealed), 1e-3 for V. The official code
    quantizes weights asymmetrically per channel; here, as everywhere in this package,
    symmetrically (zero point 0), so the integer model is the same kind as the others.
    ``learn_weight_step`` turns the learned steps on or off for any method: measured on
    mnist5k (docs/design-notes.md), they, not λ, are what lets Genie-M calibrate on
    noise where QDrop collapses.

Defaults are the official code's: 20,000 iterations per block, batch 32, Adam with
lr 1e-3 on V, λ = 0.01, reconstruction loss ``Σ_channels (ŷ − y)²`` averaged over the
rest. 20,000 iterations per block are hours on a CPU: ``iterations`` is a setting.

Blocks are found in the traced graph, not by module type, so any BatchNorm CNN works:
a *cut* is a node after which its own output is the only value still needed; the
nodes between two cuts form a segment, and each unit is a run of segments ending
with the first that holds a quantized layer, plus any segments without one that follow
(a trailing ReLU or pooling). A ResNet's cuts are its block outputs; a plain CNN's are
between every layer, so it is reconstructed layer by layer, depthwise and grouped
convolutions included.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from distill_data.errors import ConfigError, DivergedError
from distill_data.quant.quantizers import LP_NORM, clip_search, symmetric_qrange

RECON_METHODS = ("adaround", "brecq", "qdrop", "genie")
ZETA, GAMMA = 1.1, -0.1  # AdaRound's stretch of the sigmoid (Nagel et al. 2020, §4.2)


@dataclass(frozen=True)
class ReconSettings:
    """What one method learns, and its defaults (the official code's)."""

    unit: str  # "layer" or "block"
    learn_act: bool
    learn_weight_scale: bool
    drop_prob: float  # QDrop: probability of keeping an activation element in float
    round_weight: float  # λ


SETTINGS = {
    "adaround": ReconSettings("layer", False, False, 0.0, 0.01),
    "brecq": ReconSettings("block", True, False, 0.0, 0.01),
    "qdrop": ReconSettings("block", True, False, 0.5, 0.01),
    "genie": ReconSettings("block", True, True, 0.5, 1.0),
}


def lp_weight_scales(w: Tensor, bits: int, p: float = LP_NORM) -> Tensor:
    """Per-output-channel symmetric steps minimising ``mean |w − q(w)|^p`` over clip
    ratios of ``max |w_c|`` (:func:`~distill_data.quant.quantizers.clip_search`)."""
    _, qmax = symmetric_qrange(bits)
    return clip_search(
        w.reshape(w.shape[0], -1),
        qmax,
        lambda x, s: torch.clamp(torch.round(x / s), -qmax, qmax) * s,
        p,
    )


def rectified_sigmoid(v: Tensor) -> Tensor:
    """AdaRound's ``h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1)``."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def beta_at(step: int, iterations: int, warmup: float, start: float, end: float) -> float:
    """β of the rounding regulariser at ``step`` (1-based): ``start`` through the warm-up,
    then linear to ``end`` at the last step (the official code's LinearTempDecay)."""
    t0 = warmup * iterations
    if step < t0:
        return start
    rel = (step - t0) / max(iterations - t0, 1)
    return end + (start - end) * max(0.0, 1.0 - rel)


class AdaRoundWeight(nn.Module):
    """Learned rounding of one weight tensor (per-channel symmetric steps).

    ``soft`` (during reconstruction): ``s·clamp(B + h(V), −q, q)``; hard (after):
    ``s·clamp(B + 1[V ≥ 0], −q, q)``. ``B = ⌊W/s₀⌋`` and ``V`` is initialised so that
    ``h(V)`` equals the fractional part of ``W/s₀``, so the soft output starts at ``W``
    itself (clamped) and the hard one at round-to-nearest's.
    """

    def __init__(self, w: Tensor, bits: int, learn_scale: bool = False) -> None:
        super().__init__()
        self.bits = bits
        s0 = lp_weight_scales(w, bits)
        shape = (-1,) + (1,) * (w.dim() - 1)
        scaled = w.detach().float() / s0.view(shape)
        base = torch.floor(scaled)
        rest = (scaled - base).clamp(0.0, 1.0 - 1e-6)
        self.register_buffer("base", base)
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0))
        if learn_scale:
            self.scale = nn.Parameter(s0.clone())
        else:
            self.register_buffer("scale", s0.clone())
        self.shape = shape
        self.soft = True

    def h(self) -> Tensor:
        return rectified_sigmoid(self.v)

    def codes(self) -> Tensor:
        """The integer codes the hard rounding chooses."""
        _, qmax = symmetric_qrange(self.bits)
        return torch.clamp(self.base + (self.v >= 0).to(self.base.dtype), -qmax, qmax)

    def forward(self) -> Tensor:
        _, qmax = symmetric_qrange(self.bits)
        up = self.h() if self.soft else (self.v >= 0).to(self.base.dtype)
        return torch.clamp(self.base + up, -qmax, qmax) * self.scale.view(self.shape)

    def round_loss(self, beta: float) -> Tensor:
        """``Σ (1 − |2h(V) − 1|^β)``: zero once every weight has chosen up or down."""
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    def extra_repr(self) -> str:
        learned = isinstance(self.scale, nn.Parameter)
        return f"bits={self.bits}, soft={self.soft}, learned step={learned}"


def _prefix_module(gm: fx.GraphModule, wanted: list[fx.Node]) -> fx.GraphModule:
    """The network up to the wanted nodes, returning their values (sharing submodules)."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in gm.graph.nodes:
        if all(w in env for w in wanted) or n.op == "output":
            break
        env[n] = g.node_copy(n, lambda a: env[a])
    g.output(tuple(env[w] for w in wanted))
    return fx.GraphModule(gm, g)


def _capture(gm: fx.GraphModule, x: Tensor, nodes: list[fx.Node], batch: int) -> list[Tensor]:
    """Values of ``nodes`` for every image of ``x`` (batch by batch), in ``nodes`` order."""
    prefix = _prefix_module(gm, nodes)
    parts: list[list[Tensor]] = [[] for _ in nodes]
    device = next(iter(gm.parameters())).device
    with torch.no_grad():
        for i in range(0, len(x), batch):
            for k, v in enumerate(prefix(x[i : i + batch].to(device))):
                parts[k].append(v.detach())
    return [torch.cat(p) for p in parts]


@dataclass
class Unit:
    """A reconstruction unit: the graph nodes from ``inp`` (exclusive) to ``out``."""

    inp: fx.Node
    out: fx.Node
    nodes: list[fx.Node]
    layers: list[str]  # the quantized wrappers it holds, by module name

    @property
    def name(self) -> str:
        return self.layers[0] if len(self.layers) == 1 else f"{self.layers[0]}..{self.layers[-1]}"


def find_units(gm: fx.GraphModule, is_quant: callable, unit: str) -> list[Unit]:
    """The reconstruction units of a traced network, in execution order.

    ``unit="layer"``: one unit per quantized layer (its input to its output).
    ``unit="block"``: runs of the segments between cuts (see the module docstring).
    """
    nodes = [n for n in gm.graph.nodes if n.op not in ("output",)]
    quant_node = {n: n.op == "call_module" and is_quant(n.target) for n in nodes}
    if unit == "layer":
        units = []
        for n in nodes:
            if quant_node[n]:
                inp = n.args[0]
                if not isinstance(inp, fx.Node) or len(n.args) != 1 or n.kwargs:
                    raise ConfigError(f"layer {n.target} does not take one tensor input")
                units.append(Unit(inp, n, [n], [n.target]))
        return units
    index = {n: i for i, n in enumerate(nodes)}
    last_use = {
        n: max((index.get(u, len(nodes)) for u in n.users), default=index[n]) for n in nodes
    }
    cuts = []
    for i, n in enumerate(nodes):
        live = [m for m in nodes[: i + 1] if last_use[m] > i]
        if n.op == "placeholder" and i > 0:
            raise ConfigError("reconstruction needs a network with one input")
        if live == [n]:
            cuts.append(i)
    segments = [nodes[a + 1 : b + 1] for a, b in zip(cuts, cuts[1:])]
    tail = nodes[cuts[-1] + 1 :]
    if tail:  # the network's output is not a single live value: keep it as one segment
        segments.append(tail)
    units: list[Unit] = []
    current: list[fx.Node] = []
    start = nodes[cuts[0]]
    for seg in segments:
        has_quant = any(quant_node[n] for n in seg)
        if has_quant and any(quant_node[n] for n in current):
            units.append(_unit(start, current, quant_node))
            start, current = current[-1], []
        current = current + seg
    if any(quant_node[n] for n in current):
        units.append(_unit(start, current, quant_node))
    elif units and current:  # trailing nodes without a layer join the last unit
        last = units.pop()
        units.append(_unit(last.inp, last.nodes + current, quant_node))
    return units


def _unit(inp: fx.Node, nodes: list[fx.Node], quant_node: dict) -> Unit:
    return Unit(inp, nodes[-1], list(nodes), [n.target for n in nodes if quant_node[n]])


def unit_module(gm: fx.GraphModule, u: Unit) -> fx.GraphModule:
    """The unit as a module of its own (sharing the network's submodules)."""
    g = fx.Graph()
    env = {u.inp: g.placeholder("x")}
    for n in u.nodes:
        for a in n.all_input_nodes:
            if a not in env:
                raise ConfigError(
                    f"{n.name} reads {a.name}, which is outside its reconstruction unit"
                )
        env[n] = g.node_copy(n, lambda a: env[a])
    g.output(env[u.out])
    return fx.GraphModule(gm, g)


class _FloatMode:
    """Within the block, every quantized wrapper runs its float layer."""

    def __init__(self, wrappers: dict) -> None:
        self.wrappers = wrappers

    def __enter__(self) -> None:
        for w in self.wrappers.values():
            w.enabled = False

    def __exit__(self, *exc) -> None:
        for w in self.wrappers.values():
            w.enabled = True


def _rec_loss(out: Tensor, target: Tensor) -> Tensor:
    """``Σ_channels (ŷ − y)²`` averaged over the other dimensions (the official code's)."""
    return (out - target).pow(2).sum(1).mean()


@torch.no_grad()
def _unit_error(block: nn.Module, x: Tensor, y: Tensor, batch: int) -> float:
    total = 0.0
    for i in range(0, len(x), batch):
        total += float(_rec_loss(block(x[i : i + batch]), y[i : i + batch])) * len(x[i : i + batch])
    return total / len(x)


def reconstruct(
    qmodel: fx.GraphModule, calib: Tensor, cfg, progress: bool | None = False
) -> list[dict]:
    """Reconstruct a range-only PTQ network (from
    :func:`~distill_data.quant.ptq.quantize_model`) in place by ``cfg.method``.

    Returns one row per unit: its layers, the reconstruction error on the calibration
    images before (round-to-nearest at the searched steps, the observer's ranges) and
    after (the learned rounding and steps), and the seconds it took.
    """
    from tqdm.auto import tqdm

    from distill_data.quant.ptq import QUANT_LAYERS

    if cfg.method not in SETTINGS:
        raise ConfigError(f"unknown reconstruction method {cfg.method!r}")
    if not isinstance(qmodel, fx.GraphModule):
        raise ConfigError("reconstruction needs the traced, folded network (fold_bn=True)")
    how = SETTINGS[cfg.method]
    lam = how.round_weight if cfg.round_weight is None else cfg.round_weight
    drop = how.drop_prob if cfg.drop_prob is None else cfg.drop_prob
    learn_ws = how.learn_weight_scale if cfg.learn_weight_step is None else cfg.learn_weight_step
    wrappers = {n: m for n, m in qmodel.named_modules() if isinstance(m, QUANT_LAYERS)}
    units = find_units(qmodel, lambda target: target in wrappers, how.unit)
    device = next(iter(qmodel.parameters())).device
    for w in wrappers.values():
        layer = w.conv if hasattr(w, "conv") else w.linear
        w.wq = AdaRoundWeight(layer.weight, w.w_bits, learn_ws).to(device)
        w.wq.soft = False  # round-to-nearest until its own unit is reconstructed
    picks = torch.Generator().manual_seed(cfg.seed)
    masks = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    for w in wrappers.values():
        w.act.drop_generator = masks
    rows = []
    bar = tqdm(
        total=len(units) * cfg.iterations,
        desc=f"{cfg.method} w{cfg.w_bits}a{cfg.a_bits}",
        unit="step",
        disable=None if progress is None else not progress,
        leave=False,
    )
    for u in units:
        t0 = time.perf_counter()
        with _FloatMode(wrappers):
            x_fp, y = _capture(qmodel, calib, [u.inp, u.out], cfg.calib_batch)
        (x_q,) = _capture(qmodel, calib, [u.inp], cfg.calib_batch)
        block = unit_module(qmodel, u).eval()
        mine = [wrappers[name] for name in u.layers]
        before = _unit_error(block, x_q, y, cfg.calib_batch)
        for w in mine:
            w.wq.soft = True
        acts = [w.act for w in mine if w.act.frozen] if how.learn_act else []
        for a in acts:
            a.learn_step(True)
            a.drop_prob = drop
        opt_v = torch.optim.Adam([w.wq.v for w in mine], lr=cfg.lr_round)
        groups = [{"params": [a.step for a in acts], "lr": cfg.lr_act}]
        if learn_ws:
            groups.append({"params": [w.wq.scale for w in mine], "lr": cfg.lr_weight_step})
        groups = [g for g in groups if g["params"]]
        opt_s = torch.optim.Adam(groups) if groups else None
        sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt_s, T_max=cfg.iterations)
                 if opt_s else None)  # fmt: skip
        for a in acts:  # only the quantizers train (QDrop's masks); BatchNorm stays put
            a.train()
        n = len(x_q)
        for step in range(1, cfg.iterations + 1):
            idx = torch.randint(0, n, (min(cfg.recon_batch, n),), generator=picks)
            xin = x_q[idx]
            if drop > 0:  # QDrop's code: the block input, element-wise quantized or float
                keep = torch.rand(xin.shape, generator=masks, device=xin.device)
                xin = torch.where(keep < drop, x_fp[idx], xin)
            loss = _rec_loss(block(xin), y[idx])
            if step >= cfg.warmup * cfg.iterations and lam > 0:
                beta = beta_at(step, cfg.iterations, cfg.warmup, cfg.beta_start, cfg.beta_end)
                loss = loss + lam * sum(w.wq.round_loss(beta) for w in mine)
            opt_v.zero_grad(set_to_none=True)
            if opt_s:
                opt_s.zero_grad(set_to_none=True)
            loss.backward()
            opt_v.step()
            if opt_s:
                opt_s.step()
                sched.step()
            bar.update(1)
        block.eval()
        for w in mine:
            w.wq.soft = False
        for a in acts:
            a.learn_step(False)
        after = _unit_error(block, x_q, y, cfg.calib_batch)
        if not math.isfinite(after):  # nothing NaN reaches a report
            raise DivergedError(
                f"reconstruction of {u.name} diverged (error {after}); lower the "
                f"settings lr_round (now {cfg.lr_round:g}) or lr_act (now {cfg.lr_act:g})"
            )
        rows.append(
            {
                "unit": u.name,
                "layers": list(u.layers),
                "error_round_to_nearest": before,
                "error_reconstructed": after,
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
    bar.close()
    for w in wrappers.values():
        w.act.drop_generator = None
        w.wq.requires_grad_(False)
    return rows
