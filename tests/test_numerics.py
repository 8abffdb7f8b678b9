"""Unit tests for normfree_bench.numerics on constructed tensors with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normfree_bench.training import numerics as nx


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def short_mantissa(x: torch.Tensor, bits: int = 16) -> torch.Tensor:
    """Round to ``bits`` significant bits so that every k * x (|k| <= 127) is exact in fp32."""
    m, e = torch.frexp(x.double())
    return torch.ldexp(torch.round(m * 2**bits) / 2**bits, e).float()


# ------------------------------------------------------------------------------------------------
# Distribution statistics
# ------------------------------------------------------------------------------------------------


def test_kurtosis_gaussian_is_zero():
    x = torch.randn(1_000_000, generator=gen(1))
    assert abs(nx.excess_kurtosis(x)) < 0.05


def test_kurtosis_uniform_is_minus_1_2():
    x = torch.rand(1_000_000, generator=gen(2)) * 4 - 1
    assert nx.excess_kurtosis(x) == pytest.approx(-1.2, abs=0.02)


def test_kurtosis_laplace_is_3():
    torch.manual_seed(3)
    x = torch.distributions.Laplace(0.5, 2.0).sample((1_000_000,))
    assert nx.excess_kurtosis(x) == pytest.approx(3.0, abs=0.15)


def test_kurtosis_exact_two_point_and_shape_free():
    # +-1 with equal weight: E[x^4] = 1, var = 1 -> excess kurtosis exactly -2, whatever the shape / dtype.
    x = torch.tensor([1.0, -1.0] * 8).reshape(2, 4, 2).to(torch.bfloat16)
    assert nx.excess_kurtosis(x) == pytest.approx(-2.0, abs=1e-12)


def test_kurtosis_constant_and_empty_are_nan():
    assert math.isnan(nx.excess_kurtosis(torch.full((10,), 3.0)))
    assert math.isnan(nx.excess_kurtosis(torch.empty(0)))


def test_max_over_rms_known_vector():
    x = torch.tensor([3.0, -4.0, 0.0, 0.0])  # rms = sqrt(25/4) = 2.5, max = 4
    assert nx.max_over_rms(x) == pytest.approx(1.6, rel=1e-12)
    assert nx.max_over_rms(torch.full((3, 5), -2.0)) == pytest.approx(1.0)
    assert math.isnan(nx.max_over_rms(torch.zeros(4)))


def test_rms_known_values():
    assert nx.rms(torch.tensor([3.0, -4.0])) == pytest.approx(math.sqrt(12.5))
    assert nx.rms(torch.zeros(3)) == 0.0
    assert math.isnan(nx.rms(torch.empty(0)))


# ------------------------------------------------------------------------------------------------
# Outlier dimensions (LLM.int8() definition)
# ------------------------------------------------------------------------------------------------


def plant(tokens: int, d: int, dim: int, n_tokens: int, value: float = 10.0, seed: int = 0) -> torch.Tensor:
    """(2, tokens // 2, d) activations with |x| < 3 everywhere except ``n_tokens`` rows of ``dim`` set to +-value."""
    x = torch.rand(tokens, d, generator=gen(seed)) * 5.8 - 2.9
    rows = torch.randperm(tokens, generator=gen(seed + 100))[:n_tokens]
    x[rows, dim] = value * torch.where(torch.arange(n_tokens) % 2 == 0, 1.0, -1.0)
    return x.reshape(2, tokens // 2, d)


def test_outlier_dim_planted_in_3_of_4_layers_is_found():
    d, tokens = 16, 200
    layers = [plant(tokens, d, dim=5, n_tokens=20, seed=i) for i in range(3)]  # 10% of tokens
    layers.append(plant(tokens, d, dim=5, n_tokens=0, seed=9))
    assert nx.outlier_dims(layers) == [5]


def test_outlier_dim_in_1_of_8_layers_is_not_found():
    d, tokens = 16, 200
    layers = [
        plant(tokens, d, dim=2, n_tokens=40, seed=i) if i == 0 else plant(tokens, d, 2, 0, seed=i) for i in range(8)
    ]
    assert nx.outlier_dims(layers) == []
    # 2 of 8 layers is exactly 25% -> counted (>=).
    layers[1] = plant(tokens, d, dim=2, n_tokens=40, seed=11)
    assert nx.outlier_dims(layers) == [2]


def test_outlier_dim_in_too_few_tokens_is_not_found():
    d, tokens = 8, 200
    layers = [plant(tokens, d, dim=3, n_tokens=4, seed=i) for i in range(4)]  # 2% of tokens
    assert nx.outlier_dims(layers) == []


def test_outlier_thresholds_are_inclusive():
    d, tokens = 8, 100
    # Exactly 6 of 100 tokens at exactly |x| = 6.0 -> fraction 0.06 >= 0.06 and 6.0 >= 6.0.
    layers = [plant(tokens, d, dim=7, n_tokens=6, value=6.0, seed=i) for i in range(4)]
    assert nx.outlier_dims(layers) == [7]
    layers = [plant(tokens, d, dim=7, n_tokens=5, value=6.0, seed=i) for i in range(4)]
    assert nx.outlier_dims(layers) == []


def test_outlier_several_dims_sorted_and_validation():
    d, tokens = 12, 100
    layers = []
    for i in range(4):
        x = plant(tokens, d, dim=9, n_tokens=10, seed=i).reshape(tokens, d)
        x[:10, 1] = -8.0
        layers.append(x)
    assert nx.outlier_dims(layers) == [1, 9]
    assert nx.outlier_dims([]) == []
    with pytest.raises(ValueError):
        nx.outlier_dims([torch.zeros(4, 8), torch.zeros(4, 9)])


# ------------------------------------------------------------------------------------------------
# int8 fake quantization
# ------------------------------------------------------------------------------------------------


def test_int8_per_tensor_round_trip_exact():
    s = 0.0371
    k = torch.randint(-127, 128, (64, 33), generator=gen(4)).float()
    k[3, 7] = -127.0
    x = k * short_mantissa(torch.tensor(s))
    out = nx.quantize_int8(x)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert torch.equal(out, x)


def test_int8_per_channel_round_trip_exact():
    out_f, in_f = 24, 40
    scales = short_mantissa(torch.rand(out_f, 1, generator=gen(5)) * 3 + 1e-3)
    k = torch.randint(-127, 128, (out_f, in_f), generator=gen(6)).float()
    cols = torch.randint(0, in_f, (out_f,), generator=gen(7))
    k[torch.arange(out_f), cols] = torch.where(torch.arange(out_f) % 2 == 0, 127.0, -127.0)
    w = k * scales
    assert torch.equal(nx.quantize_int8(w, dim=1), w)
    assert torch.equal(nx.quantize_int8(w, dim=-1), w)
    # One scale for the whole tensor cannot represent the rows with small scales.
    assert not torch.equal(nx.quantize_int8(w), w)


def test_int8_per_token_round_trip_exact():
    b, t, d = 3, 10, 16
    scales = short_mantissa(torch.rand(b, t, 1, generator=gen(8)) * 50 + 1e-2)
    k = torch.randint(-127, 128, (b, t, d), generator=gen(9)).float()
    k[..., 0] = 127.0
    x = k * scales
    assert torch.equal(nx.quantize_int8(x, dim=-1), x)


def test_int8_error_bounded_by_half_scale():
    x = torch.randn(50, 70, generator=gen(10)) * 3
    for dim in (None, 0, 1):
        absmax = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
        scale = absmax / 127
        err = (nx.quantize_int8(x, dim=dim) - x).abs()
        assert torch.all(err <= scale / 2 * (1 + 1e-5))
        assert err.max() > 0  # it really quantized


def test_int8_zero_tensor_and_zero_rows():
    z = torch.zeros(4, 5)
    assert torch.equal(nx.quantize_int8(z), z)
    x = torch.randn(4, 5, generator=gen(11))
    x[2] = 0.0
    out = nx.quantize_int8(x, dim=-1)
    assert torch.isfinite(out).all()
    assert torch.equal(out[2], torch.zeros(5))


def test_int8_keeps_dtype():
    x = torch.randn(8, 8, generator=gen(12)).to(torch.bfloat16)
    assert nx.quantize_int8(x, dim=-1).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------
# fp8
# ------------------------------------------------------------------------------------------------


def test_fp8_supported_is_consistent():
    assert nx.fp8_supported() == (nx.cast_fp8(torch.ones(2)) is not None)


def test_cast_fp8_exact_on_representable_values():
    if not nx.fp8_supported():
        pytest.skip("float8 e4m3fn not available in this torch build")
    # Powers of two from the smallest subnormal (2^-9) to 256, both signs, and e4m3 values like 1.125, 448.
    x = torch.tensor([2.0**e for e in range(-9, 9)] + [1.125, 3.5, 448.0, 0.0])
    x = torch.cat([x, -x])
    assert torch.equal(nx.cast_fp8(x, scaled=False), x)


def test_cast_fp8_quantizes_and_scales():
    if not nx.fp8_supported():
        pytest.skip("float8 e4m3fn not available in this torch build")
    # 1 + 2^-4 is not on the e4m3 grid (3 mantissa bits) -> rounds to 1 (half to even).
    assert nx.cast_fp8(torch.tensor([1.0625]), scaled=False).item() == 1.0
    # Unscaled: tiny values flush to 0 and large values saturate at 448.
    out = nx.cast_fp8(torch.tensor([1e-5, 1000.0, -1000.0]), scaled=False)
    assert out.tolist() == [0.0, 448.0, -448.0]
    # Scaled: the absmax survives, tiny values are kept with ~3-bit relative precision.
    x = torch.tensor([1e-5, 2e-5, -3e-5])
    out = nx.cast_fp8(x, scaled=True)
    assert out[2].item() == pytest.approx(-3e-5, rel=1e-6)
    assert torch.allclose(out, x, rtol=2**-4, atol=0)
    assert torch.equal(nx.cast_fp8(torch.zeros(3)), torch.zeros(3))
    y = torch.randn(100, generator=gen(13)).to(torch.bfloat16)
    assert nx.cast_fp8(y).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------
# simulated_quantization
# ------------------------------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.act = nn.GELU()
        self.blocks = nn.Sequential(nn.Linear(32, 32, bias=False), nn.ReLU(), nn.Linear(32, 32))
        self.out = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.act(self.inp(x))))


@pytest.fixture
def tiny() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(14)
    model = Tiny().eval()
    x = torch.randn(2, 7, 16, generator=gen(15)) * 2
    return model, x


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bitwise_same(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert now.keys() == snap.keys()
    for k, v in snap.items():
        assert torch.equal(now[k], v), k
    for m in model.modules():
        assert "forward" not in m.__dict__


def test_simquant_none_is_identity(tiny):
    model, x = tiny
    ref = model(x)
    with torch.no_grad(), nx.simulated_quantization(model, "none", "none") as m:
        assert m is model
        assert torch.equal(model(x), ref)


@pytest.mark.parametrize(
    ("weights", "activations"),
    [("int8", "none"), ("none", "int8_tensor"), ("none", "int8_token"), ("int8", "int8_token")],
)
def test_simquant_int8_changes_output_and_restores(tiny, weights, activations):
    model, x = tiny
    snap = snapshot(model)
    with torch.no_grad():
        ref = model(x)
        with nx.simulated_quantization(model, weights, activations):
            out = model(x)
        after = model(x)
    assert not torch.equal(out, ref)
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()  # small, as int8 error should be
    assert torch.equal(after, ref)
    assert_bitwise_same(model, snap)


def test_simquant_matches_manual_quantization(tiny):
    model, x = tiny
    lin = model.inp
    with torch.no_grad():
        want = nn.functional.linear(nx.quantize_int8(x, dim=-1), nx.quantize_int8(lin.weight, dim=1), lin.bias)
        with nx.simulated_quantization(model, "int8", "int8_token"):
            got = lin(x)
    assert torch.equal(got, want)


def test_simquant_fp8(tiny):
    if not nx.fp8_supported():
        pytest.skip("float8 e4m3fn not available in this torch build")
    model, x = tiny
    snap = snapshot(model)
    with torch.no_grad():
        ref = model(x)
        with nx.simulated_quantization(model, "fp8", "fp8"):
            out = model(x)
    assert not torch.equal(out, ref)
    assert torch.isfinite(out).all()
    assert_bitwise_same(model, snap)


def test_simquant_restores_after_exception(tiny):
    model, x = tiny
    snap = snapshot(model)
    ref = model(x).detach()
    with pytest.raises(RuntimeError, match="boom"):
        with nx.simulated_quantization(model, "int8", "int8_tensor"):
            model(x)
            raise RuntimeError("boom")
    assert_bitwise_same(model, snap)
    assert torch.equal(model(x).detach(), ref)


def test_simquant_nesting_restores_outer(tiny):
    model, x = tiny
    with torch.no_grad():
        ref = model(x)
        with nx.simulated_quantization(model, "int8", "none"):
            outer = model(x)
            with nx.simulated_quantization(model, "none", "none"):
                assert torch.equal(model(x), ref)
            assert torch.equal(model(x), outer)
        assert torch.equal(model(x), ref)


def test_simquant_rejects_unknown_names(tiny):
    model, _ = tiny
    snap = snapshot(model)
    with pytest.raises(ValueError, match="int8_token"):
        with nx.simulated_quantization(model, "none", "int4"):
            pass
    with pytest.raises(ValueError, match="fp8"):
        with nx.simulated_quantization(model, "int8_tensor", "none"):
            pass
    assert_bitwise_same(model, snap)


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------


def test_saturation_fraction():
    y = torch.tensor([0.0, 0.5, 0.99, 0.995, -0.999, 1.0, -0.2, 0.98])
    assert nx.saturation_fraction(y) == pytest.approx(3 / 8)  # strict: 0.99 itself does not count
    assert nx.saturation_fraction(y, level=0.4) == pytest.approx(6 / 8)
    assert nx.saturation_fraction(torch.tanh(torch.full((4, 4), 10.0))) == 1.0


def test_token_mean_and_spread_constructed():
    b, t, d = 3, 64, 32
    noise = torch.randn(b, t, d, generator=gen(16))
    noise = noise - noise.mean(dim=1, keepdim=True)  # exactly zero token mean per channel
    noise = noise / noise.square().mean(dim=(1, 2), keepdim=True).sqrt() * 0.5  # per-sequence RMS 0.5
    shared = torch.randn(b, 1, d, generator=gen(17))
    shared = shared / shared.square().mean(dim=2, keepdim=True).sqrt() * 4.0  # RMS 4 per sequence
    mean, spread = nx.token_mean_and_spread(noise + shared)
    assert mean == pytest.approx(4.0, rel=1e-5)
    assert spread == pytest.approx(0.5, rel=1e-5)
    # Without the shared vector the token mean vanishes; a (T, d) tensor counts as B = 1.
    mean0, spread0 = nx.token_mean_and_spread(noise[0])
    assert mean0 == pytest.approx(0.0, abs=1e-6)
    assert spread0 == pytest.approx(0.5, rel=1e-5)
    with pytest.raises(ValueError):
        nx.token_mean_and_spread(torch.zeros(5))


def test_pearson():
    xs = [0.0, 1.0, 2.0, 3.5, 10.0]
    assert nx.pearson(xs, [3 * v - 2 for v in xs]) == pytest.approx(1.0, abs=1e-12)
    assert nx.pearson(xs, [-0.5 * v + 7 for v in xs]) == pytest.approx(-1.0, abs=1e-12)
    assert nx.pearson([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.5)
    assert math.isnan(nx.pearson([1.0], [2.0]))
    assert math.isnan(nx.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError):
        nx.pearson([1.0, 2.0], [1.0])
