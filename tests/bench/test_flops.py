"""Training FLOPs: the counter's forward/backward split, the custom-op formulas, and the bench's
counts (every step, validation excluded, deterministic, the same in a separate or inline pass)."""

import lightning.pytorch as pl
import pytest
import torch
import yaml
from bench_techniques import EMPTY, KEEP_HALF
from click.testing import CliRunner
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_eff.bench import load_result, run_bench
from lightning_eff.bench.command import bench
from lightning_eff.bench.flops import SplitFlopCounter
from lightning_eff.bench.quality import CurvePoint, compute_to_quality
from lightning_eff.bench.tasks import get_task

N, IN, HID, OUT = 8, 32, 64, 10


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HID), nn.ReLU(), nn.Linear(HID, OUT))


def test_forward_and_backward_are_split_and_no_grad_forwards_count_as_forward():
    model, x = mlp(), torch.randn(N, IN)
    counter = SplitFlopCounter()
    with counter:
        model(x).sum().backward()
        with torch.no_grad():  # a data selector's scoring forward
            model(x)
    forward = 2 * N * (IN * HID + HID * OUT)
    assert counter.forward == 2 * forward
    # The input needs no gradient: layer 1 computes only its weight gradient, layer 2 both.
    assert counter.backward == 2 * N * IN * HID + 2 * (2 * N * HID * OUT)
    reference = FlopCounterMode(display=False)
    with reference:
        model(x).sum().backward()
    assert counter.total - forward == reference.get_total_flops()


def test_a_frozen_layer_skips_its_weight_gradient_and_it_is_not_counted():
    model, x = mlp(), torch.randn(N, IN)
    model[0].requires_grad_(False)
    counter = SplitFlopCounter()
    with counter:
        model(x).sum().backward()
    assert counter.backward == 2 * (2 * N * HID * OUT) - 2 * N * HID * OUT  # layer 2's weight grad only


def test_counts_accumulate_across_with_blocks():
    model, x = mlp(), torch.randn(N, IN)
    counter = SplitFlopCounter()
    for _ in range(3):
        with counter:
            model(x)
        model(x)  # outside: not counted
    assert counter.forward == 3 * 2 * N * (IN * HID + HID * OUT)


def _count(fn, *args):
    mode = FlopCounterMode(display=False)
    with mode:
        fn(*args)
    return mode.get_total_flops()


def test_grouped_moe_op_counts_what_its_reference_implementation_executes():
    kernels = pytest.importorskip("lightning_eff.kernels")
    from lightning_eff.kernels.grouped_gemm import (
        grouped_swiglu_backward_reference,
        grouped_swiglu_forward_reference,
    )

    torch.manual_seed(0)
    tokens, hidden, ff, experts, top_k = 12, 8, 16, 4, 2
    x = torch.randn(tokens, hidden, requires_grad=True)
    w_gate, w_up = (torch.randn(experts, ff, hidden, requires_grad=True) for _ in range(2))
    w_down = torch.randn(experts, hidden, ff, requires_grad=True)
    routing = kernels.moe_topk_routing(torch.randn(tokens, experts), top_k)
    counter = SplitFlopCounter()
    with counter:
        out = kernels.moe_grouped_swiglu(x, w_gate, w_up, w_down, routing.weights, routing.offsets, routing.permutation)
        out.sum().backward()
    args = (x.detach(), w_gate.detach(), w_up.detach(), w_down.detach(), routing.weights, routing.offsets, routing.permutation)
    forward = _count(grouped_swiglu_forward_reference, *args)
    assert counter.forward == forward == 3 * 2 * tokens * top_k * hidden * ff
    _, gate, up = grouped_swiglu_forward_reference(*args)
    assert counter.backward == _count(grouped_swiglu_backward_reference, torch.ones(tokens, hidden), *args, gate, up)
    assert not counter.unknown_ops


def test_fused_linear_cross_entropy_counts_its_chunked_gemms_and_the_recompute():
    kernels = pytest.importorskip("lightning_eff.kernels")
    tokens, hidden, vocab = 16, 8, 32
    h = torch.randn(tokens, hidden, requires_grad=True)
    w = torch.randn(vocab, hidden, requires_grad=True)
    counter = SplitFlopCounter()
    with counter:
        kernels.fused_linear_cross_entropy(h, w, torch.randint(0, vocab, (tokens,)), chunk_size=4).sum().backward()
    gemm = 2 * tokens * hidden * vocab
    assert counter.forward == gemm
    assert counter.backward == 3 * gemm  # logits again, then grad of hidden and of weight
    assert not counter.unknown_ops


def test_compute_to_quality_reads_the_same_point_as_time_to_quality():
    curve = [CurvePoint(0, 0.0, 0.1, 0), CurvePoint(10, 1.0, 0.5, 100), CurvePoint(20, 2.0, 0.9, 200)]
    assert compute_to_quality(curve, 0.7, higher_is_better=True) == 200
    assert compute_to_quality(curve, 0.95, higher_is_better=True) is None
    assert compute_to_quality([CurvePoint(0, 0.0, 0.9)], 0.5, higher_is_better=True) is None  # not counted


def one_vision_step_flops() -> tuple[int, int]:
    """Forward and backward FLOPs of one training step of the vision task, counted by hand here."""
    module = get_task("vision").make_module()
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    counter = SplitFlopCounter()
    with counter:
        module.per_sample_loss((x, y)).mean().backward()
    return counter.forward, counter.backward


STEPS = 6


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    """The same tiny bench command run twice (FLOPs in the default separate pass) and once inline."""
    folder = tmp_path_factory.mktemp("flops")
    recipe = folder / "keep_half.yaml"
    recipe.write_text(yaml.safe_dump(KEEP_HALF))
    args = ["--recipe", str(recipe), "--repeats", "1", "--max-steps", str(STEPS), "--evals", "2", "--warmup-steps", "0", "-q"]
    results = []
    for name, extra in (("a", []), ("b", []), ("inline", ["--flops", "inline"])):
        out = CliRunner().invoke(bench, [*args, *extra, "--out", str(folder / name)])
        assert out.exit_code == 0, out.output
        results.append(load_result(folder / name / "results.json"))
    return results


def counts(result):
    return [(r.arm, r.flops, r.forward_flops, r.backward_flops, [p.flops for p in r.curve]) for r in result.runs]


def test_same_command_and_seed_give_identical_flop_counts(twice):
    a, b, inline = twice
    assert counts(a) == counts(b)
    assert counts(a) == counts(inline)  # the separate pass counts exactly what the timed run executed
    assert a.summary.compute_saving == b.summary.compute_saving


def test_every_training_step_is_counted_and_validation_is_not(twice):
    result = twice[0]
    forward, backward = one_vision_step_flops()
    baseline = next(r for r in result.runs if r.arm == "baseline")
    assert baseline.forward_flops == STEPS * forward and baseline.backward_flops == STEPS * backward
    # Evaluations at steps 0, 3, 6: the sanity-check validation counts nothing, each point grows by
    # its training steps only (the optimizer update is elementwise: 0 FLOPs).
    assert [(p.step, p.flops) for p in baseline.curve] == [(s, s * (forward + backward)) for s in (0, 3, 6)]


def test_a_recipe_that_trains_on_half_of_each_batch_does_half_the_work(twice):
    result = twice[0]
    base, rec = (next(r for r in result.runs if r.arm == arm) for arm in ("baseline", "recipe"))
    assert rec.forward_flops * 2 == base.forward_flops and rec.backward_flops * 2 == base.backward_flops
    assert result.summary.ratios["flops"].median == 0.5


def test_table_html_and_method_report_compute(twice):
    result = twice[0]
    from lightning_eff.bench import format_table

    table = format_table(result)
    assert "compute to quality (FLOP)" in table and "training compute (FLOP)" in table
    verdict = next(line for line in table.splitlines() if line.startswith("verdict"))
    assert f"compute: {result.summary.compute_verdict}" in verdict
    assert "separate, untimed pass" in result.method.flops and "1.1x" in result.method.flops


def test_flops_off_counts_nothing_and_says_so():
    result = run_bench("vision", EMPTY, repeats=1, max_steps=2, evals=1, warmup_steps=0, quiet=True, flops="off")
    assert all(r.flops is None and all(p.flops is None for p in r.curve) for r in result.runs)
    assert result.summary.compute_verdict == "not counted"
    from lightning_eff.bench import format_table

    assert "compute not counted" in format_table(result) and "compute to quality" not in format_table(result)
    assert result.method.flops == "not counted (--flops off)"


def test_a_counting_pass_is_joined_to_its_timed_run_by_evaluation_step():
    from test_noise import make_run

    from lightning_eff.bench.counting import diverged, merge_counts
    from lightning_eff.bench.schema import Point

    timed = make_run().model_copy(update={"flops": None, "forward_flops": None, "backward_flops": None, "curve": [
        Point(step=0, train_seconds=0.0, quality=0.1), Point(step=5, train_seconds=1.0, quality=0.4),
        Point(step=10, train_seconds=2.0, quality=0.5)]})
    counted = make_run().model_copy(update={"flops": 300, "forward_flops": 100, "backward_flops": 200, "curve": [
        Point(step=0, train_seconds=0.0, quality=0.1, flops=0), Point(step=5, train_seconds=3.0, quality=0.4, flops=150),
        Point(step=10, train_seconds=6.0, quality=0.5, flops=300)]})
    merged = merge_counts(timed, counted)
    assert [(p.train_seconds, p.flops) for p in merged.curve] == [(0.0, 0), (1.0, 150), (2.0, 300)]  # times stay
    assert (merged.flops, merged.forward_flops, merged.backward_flops) == (300, 100, 200)
    assert not diverged(timed, counted)
    other = counted.model_copy(update={"curve": [*counted.curve[:2], counted.curve[2].model_copy(update={"quality": 0.6})]})
    assert diverged(timed, other)
    assert merge_counts(timed, counted.model_copy(update={"curve": counted.curve[:2]})).curve[2].flops is None


def test_counts_equal_torchs_flop_counter_on_a_transformer_and_a_conv_training_step():
    """The counter skips torch's per-op decomposition detour where an op has none: same counts."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=16, num_labels=3,
    )
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(config)
    ids, labels = torch.randint(0, 50, (4, 12)), torch.tensor([0, 1, 2, 1])
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    images = torch.randn(4, 1, 8, 8)
    steps = {
        "bert": lambda: bert(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward(),
        "conv": lambda: torch.nn.functional.cross_entropy(conv(images), labels).backward(),
    }
    for name, step in steps.items():
        ours, reference = SplitFlopCounter(), FlopCounterMode(display=False)
        with ours:
            step()
        with reference:
            step()
        assert ours.total == reference.get_total_flops() > 0, name
        assert ours.forward > 0 and ours.backward > 0, name


class MatmulSGD(torch.optim.SGD):
    """An optimizer whose update does a matmul (like Shampoo or Muon): 2 * 16 * 16 * 16 FLOPs a step."""

    def step(self, closure=None):
        loss = closure() if closure is not None else None  # Lightning's closure: forward and backward
        torch.ones(16, 16) @ torch.ones(16, 16)
        super().step()
        return loss


class MatmulsAround(pl.Callback):
    """Work a technique does before the update, and after it in ``on_train_batch_end``."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        torch.ones(8, 8) @ torch.ones(8, 8)  # 2 * 8 * 8 * 8 = 1024 FLOPs

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        torch.ones(4, 4) @ torch.ones(4, 4)  # 2 * 4 * 4 * 4 = 128 FLOPs


def _meter_total(callbacks, optimizer_class, steps=3) -> int:
    from lightning_eff.bench.flops import FlopMeter
    from lightning_eff.testing import TinyClassifier, TinyDataModule, quiet_trainer_kwargs

    class Module(TinyClassifier):
        def configure_optimizers(self):
            return optimizer_class(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    meter = FlopMeter()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps), callbacks=meter.around(callbacks))
    trainer.fit(Module(), datamodule=TinyDataModule())
    return meter.total


def test_the_optimizer_update_is_not_counted_and_technique_work_around_it_is():
    steps = 3
    plain = _meter_total([], torch.optim.SGD, steps)
    assert _meter_total([], MatmulSGD, steps) == plain  # the update's own matmul is outside the count
    assert _meter_total([MatmulsAround()], MatmulSGD, steps) == plain + steps * (1024 + 128)


def test_counting_resumes_right_after_a_manual_optimization_update():
    from lightning_eff.bench.flops import FlopMeter
    from lightning_eff.testing import TinyClassifier, TinyDataModule, quiet_trainer_kwargs

    class Manual(TinyClassifier):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(self.per_sample_loss(batch).mean())
            optimizer.step()
            torch.ones(8, 8) @ torch.ones(8, 8)  # after the update, still this step's work: 1024 FLOPs

        def configure_optimizers(self):
            return MatmulSGD(self.parameters(), lr=0.01)

    def total(model):
        torch.manual_seed(0)
        meter = FlopMeter()
        pl.Trainer(**quiet_trainer_kwargs(max_steps=2), callbacks=meter.around([])).fit(model, datamodule=TinyDataModule())
        return meter

    meter = total(Manual())
    forward_and_backward = meter.total - 2 * 1024
    torch.manual_seed(0)
    model, batch = TinyClassifier(), next(iter(TinyDataModule().train_dataloader()))
    counter = SplitFlopCounter()
    with counter:
        model.per_sample_loss(batch).mean().backward()
    assert forward_and_backward == 2 * counter.total
