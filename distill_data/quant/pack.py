"""Bit packing of integer quantization codes into bytes, for the shipped student file.

Layout — the ONNX INT4/UINT4 (opset 21) and INT2/UINT2 convention, generalised to any
width ``b`` from 1 to 8 as an LSB-first bitstream:

* the tensor is flattened row-major (``reshape(-1)``, C order), not packed per row;
* code ``i`` occupies bits ``b·i … b·i + b − 1`` of the stream, and stream bit ``j`` is
  bit ``j mod 8`` (value ``2^(j mod 8)``) of byte ``j // 8`` — i.e. the bytes are the
  little-endian encoding of the integer ``Σ_i u_i · 2^(b·i)``;
* the last byte's unused high bits are zero;
* signed codes are stored as ``b``-bit two's complement (``u = q mod 2^b``; int4 −2 is
  ``0xE``), unsigned codes as they are.

For ``b`` in {1, 2, 4, 8} no code straddles a byte: element 0 sits in the low bits of
byte 0 (int4: low nibble, then high nibble), so a packed int4/uint4/int2/uint2 blob is
byte-for-byte an ONNX initializer's ``raw_data`` (``make_tensor(INT4, [1, −2, 3])`` →
``E1 03``). For 3, 5, 6 and 7 bits codes straddle byte boundaries; ONNX has no such
types, the layout is simply the same bitstream (GPTQ's 3-bit format straddles int32
words in the same low-bits-first way, but packs along a different axis).

Other ecosystems differ (bitsandbytes puts the first element in the high nibble, AWQ
interleaves, GGUF Q4_0 pairs element j with j + 16), so packed blobs are only ever read
back by :func:`unpack` or fed to ONNX.

The result is a plain ``uint8`` tensor, which ``torch.load(weights_only=True)`` reads.
Everything is vectorised: no Python loop runs over elements.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill_data.errors import ConfigError

MIN_PACK_BITS, MAX_PACK_BITS = 1, 8


def check_pack_bits(bits: int) -> int:
    """Return ``bits`` if it is an integer from 1 to 8, else raise :class:`ConfigError`."""
    if (
        isinstance(bits, bool)
        or not isinstance(bits, int)
        or not (MIN_PACK_BITS <= bits <= MAX_PACK_BITS)
    ):
        raise ConfigError(
            f"bits must be an integer from {MIN_PACK_BITS} to {MAX_PACK_BITS}, got {bits!r}"
        )
    return bits


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """Inclusive range of ``bits``-bit codes: ``[−2^(b−1), 2^(b−1) − 1]`` or ``[0, 2^b − 1]``."""
    b = check_pack_bits(bits)
    return (-(1 << (b - 1)), (1 << (b - 1)) - 1) if signed else (0, (1 << b) - 1)


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes that ``numel`` codes of ``bits`` bits take when packed: ``⌈numel·bits / 8⌉``."""
    b = check_pack_bits(bits)
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise ConfigError(f"numel must be a non-negative integer, got {numel!r}")
    return (numel * b + 7) // 8


def pack(codes: Tensor, bits: int, signed: bool) -> Tensor:
    """Pack integer codes into a flat ``uint8`` tensor (layout: module docstring).

    Args:
        codes: Integer tensor of any shape; every value within :func:`code_range`.
        bits: Code width, 1 to 8.
        signed: Whether the codes are signed (stored as two's complement).

    Returns:
        ``uint8`` tensor of :func:`packed_nbytes` bytes, on ``codes``' device. The shape
        is not stored: keep it beside the blob and pass its ``numel`` to :func:`unpack`.

    Raises:
        ConfigError: Non-integer codes, an unsupported width, or codes out of range.
    """
    b = check_pack_bits(bits)
    if not isinstance(codes, Tensor):
        raise ConfigError(f"codes must be an integer tensor, got {type(codes).__name__}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ConfigError(
            f"codes must be an integer tensor, got dtype {codes.dtype}; round and convert "
            "them (e.g. codes.round().to(torch.int64)) before packing"
        )
    lo, hi = code_range(b, signed)
    flat = codes.reshape(-1)
    n = flat.numel()
    if n:
        cmin, cmax = int(flat.min()), int(flat.max())
        if cmin < lo or cmax > hi:
            kind = "signed" if signed else "unsigned"
            raise ConfigError(
                f"codes must lie in [{lo}, {hi}] for {kind} {b}-bit packing, got values "
                f"from {cmin} to {cmax}"
            )
    # b-bit two's complement (a no-op for unsigned codes); values now fit in a uint8
    u = (flat.to(torch.int16) & ((1 << b) - 1)).to(torch.uint8)
    nbytes = packed_nbytes(n, b)
    if 8 % b == 0:  # whole codes per byte: shift each into its slot and add
        per = 8 // b
        u = torch.cat([u, u.new_zeros(nbytes * per - n)]).reshape(nbytes, per)
        shifts = torch.arange(0, 8, b, dtype=torch.uint8, device=u.device)
        return (u << shifts).sum(dim=1, dtype=torch.uint8)
    # codes straddle bytes: expand to a bitstream, LSB first, and regroup into bytes
    bit = torch.arange(b, dtype=torch.uint8, device=u.device)
    stream = ((u.unsqueeze(1) >> bit) & 1).reshape(-1)
    stream = torch.cat([stream, stream.new_zeros(nbytes * 8 - stream.numel())])
    weights = torch.arange(8, dtype=torch.uint8, device=u.device)
    return (stream.reshape(nbytes, 8) << weights).sum(dim=1, dtype=torch.uint8)


def unpack(
    packed: Tensor, bits: int, signed: bool, numel: int, dtype: torch.dtype = torch.int64
) -> Tensor:
    """Inverse of :func:`pack`: the first ``numel`` codes, as a flat tensor.

    Args:
        packed: ``uint8`` tensor from :func:`pack` (any shape; read flat).
        bits: Code width used when packing.
        signed: Signedness used when packing (sign-extends two's complement codes).
        numel: Number of codes packed (``reshape`` the result to the original shape).
        dtype: Integer dtype of the result (default ``int64``; ``int8`` for signed
            or ``uint8`` for unsigned codes take an eighth of the memory). Must hold
            every code of the range.

    Returns:
        Tensor ``(numel,)`` of ``dtype`` on ``packed``'s device.

    Raises:
        ConfigError: ``packed`` is not ``uint8`` or its length does not match
            ``numel`` and ``bits``, or ``dtype`` cannot hold the codes.
    """
    b = check_pack_bits(bits)
    nbytes = packed_nbytes(numel, b)
    if not isinstance(packed, Tensor) or packed.dtype != torch.uint8:
        got = packed.dtype if isinstance(packed, Tensor) else type(packed).__name__
        raise ConfigError(f"packed data must be a uint8 tensor, got {got}")
    if packed.numel() != nbytes:
        raise ConfigError(
            f"packed data has {packed.numel()} bytes but {numel} codes of {b} bits take "
            f"{nbytes}; the blob, numel and bits do not belong together"
        )
    lo, hi = code_range(b, signed)
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise ConfigError(f"dtype must be an integer dtype, got {dtype}")
    info = torch.iinfo(dtype)
    if lo < info.min or hi > info.max:
        raise ConfigError(
            f"dtype {dtype} cannot hold {'signed' if signed else 'unsigned'} {b}-bit codes "
            f"[{lo}, {hi}]; use torch.int64 (the default) or a wider type"
        )
    data = packed.reshape(-1)
    mask = (1 << b) - 1
    if 8 % b == 0:
        shifts = torch.arange(0, 8, b, dtype=torch.uint8, device=data.device)
        u = ((data.unsqueeze(1) >> shifts) & mask).reshape(-1)[:numel]
    else:
        bit = torch.arange(8, dtype=torch.uint8, device=data.device)
        stream = ((data.unsqueeze(1) >> bit) & 1).reshape(-1)[: numel * b]
        weights = torch.arange(b, dtype=torch.uint8, device=data.device)
        u = (stream.reshape(numel, b) << weights).sum(dim=1, dtype=torch.uint8)
    q = u.to(torch.int16)
    if signed:
        q = torch.where(q > hi, q - (1 << b), q)
    return q.to(dtype)
