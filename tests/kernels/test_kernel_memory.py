"""The CPU memory benchmark: its live-bytes tracker is sound, and the fused op's peak is far below
the unfused one (at a small vocab here; docs/kernels.md has the numbers at vocab 32k)."""

import importlib.util
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "kernel_memory.py"
_spec = importlib.util.spec_from_file_location("kernel_memory", _PATH)
kernel_memory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernel_memory)

MiB = 2**20


def test_the_tracker_sees_frees_and_reports_the_high_water_mark():
    def work():
        a = torch.empty(MiB, dtype=torch.uint8)
        b = torch.empty(2 * MiB, dtype=torch.uint8)  # peak: a + b = 3 MiB
        del a, b
        c = torch.empty(MiB, dtype=torch.uint8)
        return c.view(-1)  # a view adds no bytes

    assert kernel_memory.peak_bytes(work, []) == 3 * MiB


def test_the_tracker_counts_tensors_that_only_autograd_still_holds():
    x = torch.randn(256, 1024, requires_grad=True)

    def forward_backward():
        y = (x * 2).exp()  # exp saves its 1 MiB output for the backward; no Python name keeps it
        y = y.sum()
        y.backward()

    assert kernel_memory.peak_bytes(forward_backward, [x]) >= 2 * MiB  # x*2 and exp(x*2) live together


def test_preexisting_inputs_are_not_counted():
    x = torch.randn(1024, 256)
    assert kernel_memory.peak_bytes(lambda: x.t().reshape(-1, 1024)[0], [x]) == 0


# (tokens, hidden, vocab): the chunk is capped by the memory budget (tokens / 8) in the first shape
# and raised to the GEMM floor (MIN_CHUNK, above Liger's rule) in the second.
SHAPES = [(256, 32, 2048), (4096, 32, 2048)]


@pytest.fixture(params=SHAPES, ids=["budget-capped chunk", "floor-raised chunk"])
def small_measurement(request, monkeypatch):
    monkeypatch.delenv("LIGHTNING_EFF_KERNELS", raising=False)
    result = kernel_memory.measure(*request.param)
    monkeypatch.delenv("LIGHTNING_EFF_KERNELS", raising=False)  # measure() forces the reference path
    return request.param, result


def test_the_shapes_cover_both_limits_of_the_default_chunk():
    chunks = [kernel_memory.flce.default_chunk_size(*shape) for shape in SHAPES]
    assert chunks[0] == SHAPES[0][0] // kernel_memory.flce.MAX_CHUNK_FRACTION
    assert chunks[1] == kernel_memory.flce.MIN_CHUNK > kernel_memory.flce.vocab_ratio_chunk_size(*SHAPES[1])


def test_fused_training_peak_is_a_fraction_of_the_unfused_one(small_measurement):
    (tokens, _, vocab), result = small_measurement
    assert result["unfused training"] >= 2 * tokens * vocab * 4  # logits and their log-softmax
    assert result["fused training"] < result["unfused training"] / 4


def test_fused_scoring_never_holds_the_logits(small_measurement):
    (tokens, _, vocab), result = small_measurement
    # at most one chunk's logits and their log-softmax (each <= 1/8 of the logits) and O(tokens)
    assert result["fused scoring"] < tokens * vocab * 4 / 2
    assert result["fused scoring"] < result["unfused scoring"] / 4
