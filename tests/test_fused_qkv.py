"""The fused kernel (`heartlora.fused_qkv`) computes `HeadLoRAQKV.reference_forward`, the
definition: the same values and the same gradients of x, A and B (and of W), for any subset of
active heads, in fp32 and bf16, eager and under `torch.compile(fullgraph=True)`."""

import pytest
import torch
import torch._dynamo
from tiny_models import qkv_adapter

from heartlora.adapters import HeadLoRAQKV

BF16_RELATIVE_ERROR = 1e-2
"""‖fused − reference‖ / ‖reference‖ allowed in bf16: 8 bits of mantissa, and the two paths
round in different places (each is ~0.3% from the float64 truth)."""


def _assert_agree(got: torch.Tensor, expected: torch.Tensor, name: str, bf16: bool) -> None:
    """Elementwise to 1e-5 in fp32; to `BF16_RELATIVE_ERROR` in norm where bf16 computed it."""
    assert got.shape == expected.shape, name
    if bf16:
        error = (got.double() - expected.double()).norm() / expected.double().norm()
        assert error <= BF16_RELATIVE_ERROR, f"{name}: relative error {float(error):.2e}"
    else:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=name)


def _value_and_grads(fn, adapter: HeadLoRAQKV, x: torch.Tensor, upstream: torch.Tensor):
    out = fn(x)
    params = (x, adapter.lora_A, adapter.lora_B, adapter.base.weight)
    return (out, *torch.autograd.grad((out * upstream).sum(), params))


def _inputs(adapter: HeadLoRAQKV, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 5, adapter.in_features, generator=generator).to(dtype).requires_grad_()
    upstream = torch.randn(2, 5, adapter.out_features, generator=generator).to(dtype)
    return x, upstream


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["per-projection", "shared"])
@pytest.mark.parametrize(
    "mask", [None, [True, False, True, False], [False, False, False, True]], ids=str
)
@pytest.mark.parametrize("targets", [("q", "v"), ("q", "k", "v"), ("k",)])
def test_fused_forward_and_gradients_equal_the_reference(targets, mask, layout, dtype):
    adapter = qkv_adapter(targets, layout, mask, dtype)
    x, upstream = _inputs(adapter, dtype)
    fused = _value_and_grads(adapter, adapter, x, upstream)
    reference = _value_and_grads(adapter.reference_forward, adapter, x, upstream)
    for name, got, expected in zip(("out", "x", "A", "B", "W"), fused, reference):
        assert got.dtype == dtype, name
        _assert_agree(got, expected, name, bf16=dtype == torch.bfloat16)


def test_deactivated_heads_rows_are_the_base_s_in_the_reference():
    adapter = qkv_adapter(("q", "v"), "per-projection", [True, False, True, False])
    x, _ = _inputs(adapter, torch.float32)
    out, base = adapter.reference_forward(x).detach(), adapter.base(x).detach()
    hd, dim = adapter.head_dim, adapter.num_heads * adapter.head_dim
    for slot in range(3):
        for head in range(adapter.num_heads):
            cols = slice(slot * dim + head * hd, slot * dim + (head + 1) * hd)
            written = slot in (0, 2) and head in (0, 2)
            assert torch.equal(out[..., cols], base[..., cols]) != written


def test_autocast_runs_the_fused_kernel_in_bf16_and_matches_the_reference():
    adapter = qkv_adapter(("q", "v"), "per-projection", [True, True, False, True])
    x, upstream = _inputs(adapter, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = _value_and_grads(adapter, adapter, x, upstream)
    reference = _value_and_grads(adapter.reference_forward, adapter, x, upstream)  # in fp32
    assert fused[0].dtype == torch.bfloat16
    for name, got, expected in zip(("out", "x", "A", "B", "W"), fused, reference):
        _assert_agree(got, expected, name, bf16=True)


@pytest.mark.parametrize("mask", [None, [False, True, True, False]], ids=str)
def test_fullgraph_compiled_fused_kernel_equals_the_eager_reference(mask):
    adapter = qkv_adapter(("q", "k", "v"), "per-projection", mask)
    x, upstream = _inputs(adapter, torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(adapter, backend="aot_eager", fullgraph=True)
    fused = _value_and_grads(compiled, adapter, x, upstream)
    reference = _value_and_grads(adapter.reference_forward, adapter, x, upstream)
    for name, got, expected in zip(("out", "x", "A", "B", "W"), fused, reference):
        _assert_agree(got, expected, name, bf16=False)
