"""Bit packing: golden bytes (ONNX INT4/INT2 layout), round trips, reference, errors."""

from __future__ import annotations

import pytest
import torch

from distill_data.errors import ConfigError
from distill_data.quant.pack import code_range, pack, packed_nbytes, unpack

WIDTHS = range(1, 9)


def reference_pack(codes: list[int], bits: int) -> bytes:
    """Independent reference: the little-endian bytes of Σ_i (q_i mod 2^b) · 2^(b·i)."""
    value = sum((q % (1 << bits)) << (bits * i) for i, q in enumerate(codes))
    return value.to_bytes((len(codes) * bits + 7) // 8, "little")


def random_codes(bits: int, signed: bool, n: int, seed: int = 0) -> torch.Tensor:
    lo, hi = code_range(bits, signed)
    g = torch.Generator().manual_seed(seed * 100 + bits * 2 + signed)
    codes = torch.randint(lo, hi + 1, (n,), generator=g)
    if n >= 2:  # always include both extremes of the range
        codes[0], codes[-1] = lo, hi
    return codes


# --------------------------------------------------------------------------- golden

GOLDEN = [
    # (codes, bits, signed, bytes); the ONNX rows were checked with onnx 1.23's
    # make_tensor (issue 15 research notes, §8)
    ([1, -2, 7, -8, 3], 4, True, [0xE1, 0x87, 0x03]),
    ([1, -2, 3], 4, True, [0xE1, 0x03]),  # ONNX INT4
    ([1, -2, 1, 0, -1], 2, True, [0x19, 0x03]),  # ONNX INT2
    ([1, 2, 3, 0, 1], 2, False, [0x39, 0x01]),  # ONNX UINT2
    ([15, 0, 9], 4, False, [0x0F, 0x09]),
    ([5, 3, 7, 1], 3, False, [0xDD, 0x03]),  # 5 + 3·2³ + 7·2⁶ + 1·2⁹ = 0x3DD
    ([-1, 3, -4], 3, True, [0x1F, 0x01]),  # 7 + 3·2³ + 4·2⁶ = 0x11F
    ([-1, 127, -128], 8, True, [0xFF, 0x7F, 0x80]),
    ([1, 0, 1, 1, 0, 0, 0, 0, 1], 1, False, [0x0D, 0x01]),
    ([], 4, True, []),
]


@pytest.mark.parametrize("codes, bits, signed, expected", GOLDEN)
def test_golden_bytes(codes, bits, signed, expected):
    assert list(reference_pack(codes, bits)) == expected  # the literal is right
    packed = pack(torch.tensor(codes, dtype=torch.int64), bits, signed)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.tolist() == expected
    back = unpack(packed, bits, signed, len(codes))
    assert back.dtype == torch.int64 and back.tolist() == codes


# ------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("bits", WIDTHS)
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("n", [1, 2, 7, 13, 1001])
def test_round_trip_and_reference(bits, signed, n):
    codes = random_codes(bits, signed, n)
    packed = pack(codes, bits, signed)
    assert packed.numel() == packed_nbytes(n, bits)
    assert bytes(packed.tolist()) == reference_pack(codes.tolist(), bits)
    torch.testing.assert_close(unpack(packed, bits, signed, n), codes, rtol=0, atol=0)


@pytest.mark.parametrize("bits", [3, 4])
def test_round_trip_large_shaped_tensor(bits):
    # a ResNet-sized weight (~10^5 codes, numel not a multiple of 8), packed in one call
    codes = random_codes(bits, True, 64 * 32 * 7 * 7 + 3)[3:].reshape(64, 32, 7, 7)
    packed = pack(codes, bits, True)
    assert packed.numel() == (codes.numel() * bits + 7) // 8
    back = unpack(packed, bits, True, codes.numel()).reshape(codes.shape)
    assert torch.equal(back, codes)


@pytest.mark.parametrize("bits", WIDTHS)
def test_extremes_and_zero_padding(bits):
    for signed in (True, False):
        lo, hi = code_range(bits, signed)
        for value in (lo, hi):
            n = 8 // bits + 1 if bits < 8 else 3  # numel that leaves a partial last byte
            codes = torch.full((n,), value)
            packed = pack(codes, bits, signed)
            assert torch.equal(unpack(packed, bits, signed, n), codes)
            used = (n * bits) % 8  # bits used in the last byte
            if used:
                assert int(packed[-1]) >> used == 0, "padding bits must be zero"
    assert code_range(4, True) == (-8, 7) and code_range(4, False) == (0, 15)
    assert code_range(1, True) == (-1, 0) and code_range(8, False) == (0, 255)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32])
def test_any_integer_dtype_packs_the_same(dtype):
    codes = torch.tensor([0, 3, 1, 2, 3])
    assert torch.equal(pack(codes.to(dtype), 2, False), pack(codes, 2, False))
    signed = torch.tensor([-8, 7, 0, -1, 5])
    if dtype != torch.uint8:
        assert torch.equal(pack(signed.to(dtype), 4, True), pack(signed, 4, True))


def test_unpack_dtypes():
    codes = torch.tensor([-128, 127, 0, -5])
    packed = pack(codes, 8, True)
    small = unpack(packed, 8, True, 4, dtype=torch.int8)
    assert small.dtype == torch.int8 and small.tolist() == codes.tolist()
    u = unpack(pack(torch.tensor([255, 0, 17]), 8, False), 8, False, 3, dtype=torch.uint8)
    assert u.dtype == torch.uint8 and u.tolist() == [255, 0, 17]
    with pytest.raises(ConfigError, match=r"cannot hold unsigned 8-bit codes \[0, 255\]"):
        unpack(pack(torch.tensor([255]), 8, False), 8, False, 1, dtype=torch.int8)
    with pytest.raises(ConfigError, match="must be an integer dtype"):
        unpack(packed, 8, True, 4, dtype=torch.float32)


def test_packed_file_loads_with_weights_only(tmp_path):
    codes = random_codes(4, True, 33).reshape(3, 11)
    path = tmp_path / "student.pt"
    torch.save({"w": pack(codes, 4, True), "bits": 4, "shape": list(codes.shape)}, path)
    blob = torch.load(path, weights_only=True)
    back = unpack(blob["w"], blob["bits"], True, 33).reshape(blob["shape"])
    assert torch.equal(back, codes)


def test_packed_nbytes():
    cases = {(5, 4): 3, (5, 2): 2, (8, 3): 3, (9, 3): 4, (0, 4): 0, (1, 1): 1}
    assert {nb: packed_nbytes(*nb) for nb in cases} == cases
    assert packed_nbytes(100_001, 8) == 100_001
    with pytest.raises(ConfigError, match="numel must be a non-negative integer"):
        packed_nbytes(-1, 4)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "codes, bits, signed, message",
    [
        ([1, -9, 3], 4, True, r"\[-8, 7\] for signed 4-bit packing, got values from -9 to 3"),
        ([0, 8], 4, True, r"\[-8, 7\] for signed 4-bit packing, got values from 0 to 8"),
        ([0, 16], 4, False, r"\[0, 15\] for unsigned 4-bit packing"),
        ([-1, 2], 2, False, r"\[0, 3\] for unsigned 2-bit packing, got values from -1 to 2"),
        ([4], 3, True, r"\[-4, 3\] for signed 3-bit packing"),
        ([300], 8, False, r"\[0, 255\] for unsigned 8-bit packing"),
    ],
)
def test_out_of_range_codes(codes, bits, signed, message):
    with pytest.raises(ConfigError, match=message):
        pack(torch.tensor(codes), bits, signed)


def test_pack_errors():
    with pytest.raises(ConfigError, match=r"integer tensor, got dtype torch.float32; round"):
        pack(torch.tensor([1.0, 2.0]), 4, True)
    with pytest.raises(ConfigError, match="integer tensor, got dtype torch.bool"):
        pack(torch.tensor([True, False]), 1, False)
    with pytest.raises(ConfigError, match="integer tensor, got list"):
        pack([1, 2], 4, True)
    for bits in (0, 9, True, 4.0):
        with pytest.raises(ConfigError, match="bits must be an integer from 1 to 8"):
            pack(torch.tensor([1]), bits, False)


def test_unpack_errors():
    packed = pack(torch.tensor([1, -2, 3]), 4, True)  # 2 bytes
    with pytest.raises(ConfigError, match="has 2 bytes but 5 codes of 4 bits take 3"):
        unpack(packed, 4, True, 5)
    with pytest.raises(ConfigError, match="has 2 bytes but 3 codes of 8 bits take 3"):
        unpack(packed, 8, True, 3)
    with pytest.raises(ConfigError, match="must be a uint8 tensor, got torch.int8"):
        unpack(packed.to(torch.int8), 4, True, 3)
