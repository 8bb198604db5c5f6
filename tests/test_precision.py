import pytest
import torch

from heartlora.training.precision import forward_precision, matmul_precision, slow_precision_note


def test_tf32_on_cuda_turns_on_tf32_matmuls_for_the_run_only():
    before = torch.get_float32_matmul_precision()
    with matmul_precision("tf32", "cuda"):  # sets a flag: no GPU needed to check it
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        with forward_precision("tf32", "cuda"):  # no autocast: the tensors stay float32
            assert not torch.is_autocast_enabled("cuda")
    assert torch.get_float32_matmul_precision() == before


def test_tf32_elsewhere_and_fp32_change_nothing():
    before = torch.get_float32_matmul_precision()
    for dtype, device in (("tf32", "cpu"), ("fp32", "cuda"), ("fp32", "cpu")):
        with matmul_precision(dtype, device), forward_precision(dtype, device):
            assert torch.get_float32_matmul_precision() == before
            assert not torch.is_autocast_enabled("cpu")


def test_bf16_autocasts_the_forward_on_the_device_given():
    with matmul_precision("bf16", "cpu"), forward_precision("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


@pytest.mark.parametrize("context", [forward_precision, matmul_precision])
def test_unknown_precision_names_the_choices(context):
    with pytest.raises(ValueError, match="fp32, tf32, bf16"):
        context("fp16", "cuda")


def test_fp32_on_cuda_gets_a_note_naming_the_faster_choices():
    note = slow_precision_note("fp32", "cuda")
    assert note is not None and "tf32" in note and "bf16" in note and "\n" not in note
    assert slow_precision_note("fp32", "cpu") is None
    assert (
        slow_precision_note("bf16", "cuda") is None and slow_precision_note("tf32", "cuda") is None
    )
