"""Per-sample cross-entropy / logsumexp: Triton kernel (interpreter) and reference against float64.

The kernel streams rows in blocks of 256 under the interpreter (the first autotune config), so the
class counts straddle 256 and 512; rows are few (each row is one interpreted program).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_eff.kernels import cross_entropy as ce
from lightning_eff.kernels import cross_entropy_logsumexp, per_sample_cross_entropy
from lightning_eff.kernels import testing as kt
from lightning_eff.kernels._dispatch import INTERPRETED

needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="needs Triton's interpreter (TRITON_INTERPRET=1)")

BLOCK = ce._CONFIGS[0].kwargs["BLOCK"] if ce.triton is not None else 256


def sample(rows, classes, dtype, seed=0, ignore_every=4):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, classes, generator=g) * 4).to(dtype)
    targets = torch.randint(0, classes, (rows,), generator=g)
    if ignore_every:
        targets[::ignore_every] = -100
    return logits, targets


def reference(logits, targets, ignore_index=-100):
    return ce.cross_entropy_forward_reference(logits, targets, ignore_index)


# Every block edge in float32; the low-precision dtypes on one short and one multi-block row.
CASES = [(torch.float32, c) for c in kt.ragged_sizes(BLOCK, small=(1, 2, 13)) + [2 * BLOCK + 1]] + [
    (dtype, c) for dtype in (torch.float16, torch.bfloat16) for c in (13, BLOCK + 1)
]


@pytest.mark.parametrize("dtype, classes", CASES)
def test_loss_lse_and_gradient_match_float64(backend, dtype, classes):
    logits, targets = sample(9, classes, dtype)
    logits = kt.nan_guarded(logits).requires_grad_(True)
    grad_loss, grad_lse = torch.randn(9), torch.randn(9)
    loss, lse = cross_entropy_logsumexp(logits, targets)
    (loss * grad_loss + lse * grad_lse).sum().backward()

    expected_loss, expected_lse = kt.float64_reference(reference, logits, targets)
    kt.assert_matches_reference(loss, expected_loss, name="loss")
    kt.assert_matches_reference(lse, expected_lse, name="lse")
    (expected_grad,) = kt.float64_gradients(reference, [logits, targets], [grad_loss, grad_lse], wrt=[0])
    kt.assert_matches_reference(logits.grad, expected_grad, name="grad")
    assert loss.dtype == lse.dtype == torch.float32 and logits.grad.dtype == dtype


def test_equals_torch_cross_entropy_with_reduction_none(backend):
    logits, targets = sample(12, 300, torch.float32)
    expected = F.cross_entropy(logits, targets, reduction="none", ignore_index=-100)
    torch.testing.assert_close(per_sample_cross_entropy(logits, targets), expected, rtol=1e-6, atol=1e-5)


def test_ignored_rows_have_zero_loss_and_get_only_the_logsumexp_gradient(backend):
    logits, targets = sample(8, 40, torch.float32, ignore_every=2)
    logits.requires_grad_(True)
    loss, lse = cross_entropy_logsumexp(logits, targets)
    assert (loss[::2] == 0).all() and (loss[1::2] > 0).all()
    torch.testing.assert_close(lse, torch.logsumexp(logits.detach(), -1))
    loss.sum().backward(retain_graph=True)
    assert (logits.grad[::2] == 0).all()
    logits.grad = None
    lse.sum().backward()  # d lse / d logits = softmax, ignored or not
    torch.testing.assert_close(logits.grad, torch.softmax(logits.detach(), -1))


def test_a_custom_ignore_index_is_honoured(backend):
    logits, _ = sample(6, 20, torch.float32)
    targets = torch.tensor([0, 7, 1, 2, 3, 19])
    loss = per_sample_cross_entropy(logits, targets, ignore_index=7)
    assert loss[1] == 0 and (loss[[0, 2, 3, 4, 5]] > 0).all()


def test_the_logits_are_bit_identical_after_forward_and_backward(backend):
    logits, targets = sample(10, 300, torch.bfloat16)
    logits.requires_grad_(True)
    before = logits.detach().clone()
    per_sample_cross_entropy(logits, targets).sum().backward()
    assert torch.equal(logits.detach().view(torch.int16), before.view(torch.int16))
    assert logits.grad.data_ptr() != logits.data_ptr()


@pytest.mark.parametrize("layout", ["padded_rows", "transposed"])
def test_non_contiguous_logits(backend, layout):
    logits, targets = sample(7, 37, torch.float32)
    strided = kt.non_contiguous(logits, layout).requires_grad_(True)
    loss, lse = cross_entropy_logsumexp(strided, targets)
    (loss + lse).sum().backward()
    expected_loss, expected_lse = kt.float64_reference(reference, logits, targets)
    kt.assert_matches_reference(loss, expected_loss)
    kt.assert_matches_reference(lse, expected_lse)
    (expected_grad,) = kt.float64_gradients(reference, [logits, targets], [torch.ones(7), torch.ones(7)], wrt=[0])
    kt.assert_matches_reference(strided.grad, expected_grad)


def test_leading_dimensions_are_kept(backend):
    logits, targets = sample(6, 11, torch.float32)
    loss = per_sample_cross_entropy(logits.view(2, 3, 11), targets.view(2, 3))
    assert loss.shape == (2, 3)
    torch.testing.assert_close(loss.view(6), per_sample_cross_entropy(logits, targets))


def test_a_nan_logit_makes_only_its_row_nan(backend):
    logits, targets = sample(5, 300, torch.float32, ignore_every=0)
    logits[2, 123] = math.nan
    loss, lse = cross_entropy_logsumexp(logits, targets)
    assert loss.isnan().tolist() == [False, False, True, False, False] == lse.isnan().tolist()


def test_out_of_range_targets_are_refused_on_cpu(backend):
    logits, targets = sample(4, 10, torch.float32, ignore_every=0)
    targets[3] = 10
    with pytest.raises(IndexError):
        per_sample_cross_entropy(logits, targets)


def test_shape_and_dtype_errors_say_what_is_expected():
    with pytest.raises(ValueError, match=r"expected targets.shape == logits.shape\[:-1\]"):
        per_sample_cross_entropy(torch.zeros(4, 10), torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="integer dtype"):
        per_sample_cross_entropy(torch.zeros(4, 10), torch.zeros(4))


@needs_interpreter
def test_backward_kernel_writes_every_gradient_element_and_nothing_else():
    logits, targets = sample(5, BLOCK + 1, torch.float16)
    _, lse = ce.cross_entropy_forward_triton(logits, targets)
    out = kt.poisoned(logits.shape, torch.float16)
    grad = ce.cross_entropy_backward_triton(logits, targets, lse, torch.ones(5), None, out=out)
    assert grad is out
    kt.assert_guards_intact(out, name="grad_logits")
    (expected,) = kt.float64_gradients(reference, [logits, targets], [torch.ones(5), None], wrt=[0])
    kt.assert_matches_reference(out, expected)


def test_reference_bounds_its_float32_copy_of_low_precision_logits(monkeypatch):
    # The CPU path upcasts chunk by chunk: the result must not depend on the chunk size.
    logits, targets = sample(9, 50, torch.bfloat16)
    whole = reference(logits, targets)
    monkeypatch.setattr(ce, "CHUNK_ELEMENTS", 100)  # two rows per chunk, the last one partial
    for a, b in zip(reference(logits, targets), whole):
        assert torch.equal(a, b)
