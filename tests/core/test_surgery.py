"""Model surgery: finding and replacing modules, optimizer fix-up, specs replayed from checkpoints."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_eff.surgery import (
    CHECKPOINT_KEY,
    SurgeryError,
    apply_surgery,
    find_modules,
    is_restoring,
    load_specs,
    reapply_from_checkpoint,
    recorded_specs,
    register_replacement,
    replace_module,
    restore_surgery,
    restore_surgery_on_load,
    save_specs,
    unmatched_problem,
    warn_if_unmatched,
)

# -- builders used by the tests (registered once, by name, like a plugin would) --------------------


class Widened(nn.Module):
    """Two Linear paths summed: new parameters with new names, output equal to the old Linear's
    when the second path is zero (a function-preserving change, like MoE upcycling's copy init)."""

    def __init__(self, old: nn.Linear) -> None:
        super().__init__()
        self.main = nn.Linear(old.in_features, old.out_features)
        self.extra = nn.Linear(old.in_features, old.out_features, bias=False)
        with torch.no_grad():
            self.main.load_state_dict(old.state_dict())
            self.extra.weight.zero_()

    def forward(self, x):
        return self.main(x) + self.extra(x)


class Scaled(nn.Module):
    """Wraps the old module by identity (its parameters are kept) and adds a scale parameter."""

    def __init__(self, old: nn.Module) -> None:
        super().__init__()
        self.inner = old
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.inner(x) * self.scale


@register_replacement("test_widen")
def widen(old: nn.Linear) -> nn.Module:
    return Widened(old)


@register_replacement("test_shrink")
def shrink(old: nn.Linear, keep_out: int, keep_in: int | None = None) -> nn.Linear:
    new = nn.Linear(keep_in or old.in_features, keep_out)
    if not is_restoring():  # on load the checkpoint provides the weights
        with torch.no_grad():
            new.weight.copy_(old.weight[:keep_out, : new.in_features])
            new.bias.copy_(old.bias[:keep_out])
    return new


@register_replacement("test_scale")
def scale(old: nn.Module) -> nn.Module:
    return Scaled(old)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def train_a_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(torch.randn(5, 3)).pow(2).mean().backward()
    optimizer.step()


def group_index(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> int:
    (index,) = [i for i, g in enumerate(optimizer.param_groups) if any(p is param for p in g["params"])]
    return index


def all_params(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    return [p for g in optimizer.param_groups for p in g["params"]]


# -- finding ---------------------------------------------------------------------------------------


def test_find_modules_by_type_skips_the_root():
    names = [n for n, _ in find_modules(Net(), types=nn.Linear)]
    assert names == ["embed", "layers.0.fc1", "layers.0.fc2", "layers.1.fc1", "layers.1.fc2", "head"]
    assert find_modules(nn.Linear(2, 2), types=nn.Linear) == []


def test_find_modules_by_class_name_string():
    assert [n for n, _ in find_modules(Net(), types="ReLU")] == ["layers.0.act", "layers.1.act"]
    assert len(find_modules(Net(), types="torch.nn.modules.linear.Linear")) == 6


def test_glob_pattern_matches_whole_qualified_names():
    assert [n for n, _ in find_modules(Net(), pattern="layers.*.fc1")] == ["layers.0.fc1", "layers.1.fc1"]
    assert find_modules(Net(), pattern="fc1") == []


def test_re_prefix_means_a_full_regex_match():
    assert [n for n, _ in find_modules(Net(), pattern=r"re:layers\.1\.fc\d")] == [
        "layers.1.fc1",
        "layers.1.fc2",
    ]
    assert find_modules(Net(), pattern=r"re:fc\d") == []


def test_exclude_removes_matches():
    found = find_modules(Net(), types=nn.Linear, exclude=["embed", "head"])
    assert [n for n, _ in found] == ["layers.0.fc1", "layers.0.fc2", "layers.1.fc1", "layers.1.fc2"]


def test_pattern_matching_nothing_warns_with_the_pattern_and_real_names():
    net = Net()
    with pytest.warns(UserWarning) as record:
        matched = warn_if_unmatched(
            "MoEUpcycling", find_modules(net, pattern="blocks.*.mlp"), net, pattern="blocks.*.mlp"
        )
    assert not matched
    message = str(record[0].message)
    assert "'blocks.*.mlp'" in message and "'layers.0.fc1' (Linear)" in message


def test_a_policy_that_matches_does_not_warn():
    net = Net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_unmatched("P", find_modules(net, pattern="head"), net, pattern="head")


def test_strict_variant_returns_a_problem_sentence_for_preflight():
    net = Net()
    problem = unmatched_problem("Float8Training", [], net, types=nn.Conv2d, pattern="layers.*")
    assert problem.startswith("Float8Training: pattern 'layers.*' and type Conv2d matched no module of Net")
    assert unmatched_problem("Float8Training", [("head", net.head)]) is None


# -- replacing -------------------------------------------------------------------------------------


def test_replace_a_linear_inside_sequential():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    new = nn.Linear(2, 3)
    old = replace_module(seq, "0", new)
    assert seq[0] is new and isinstance(old, nn.Linear) and old is not new


def test_replace_a_linear_deep_in_a_nested_model():
    net = Net()
    new = nn.Linear(8, 4)
    replace_module(net, "layers.1.fc2", new)
    assert net.layers[1].fc2 is new
    assert dict(net.named_modules())["layers.1.fc2"] is new


def test_replacing_an_unknown_name_suggests_close_ones():
    with pytest.raises(
        SurgeryError, match="no submodule named 'layers.1.fc3'; did you mean 'layers.1.fc2', 'layers.1.fc1'"
    ):
        replace_module(Net(), "layers.1.fc3", nn.Linear(1, 1))


def test_unknown_builder_is_a_clear_error_before_anything_changes():
    net = Net()
    before = net.layers[0].fc1
    with pytest.raises(
        SurgeryError, match="unknown replacement builder 'moe_upcycle_typo'.*register_replacement"
    ):
        apply_surgery(
            net,
            [
                {"name": "layers.0.fc1", "builder": "test_widen"},
                {"name": "head", "builder": "moe_upcycle_typo"},
            ],
        )
    assert net.layers[0].fc1 is before


def test_params_that_are_not_json_are_rejected():
    with pytest.raises(SurgeryError, match="plain JSON"):
        apply_surgery(
            Net(), [{"name": "head", "builder": "test_shrink", "params": {"keep_out": torch.tensor(1)}}]
        )


def test_surgery_records_its_specs_on_the_root():
    net = Net()
    apply_surgery(net, [{"name": "layers.0.fc1", "builder": "test_shrink", "params": {"keep_out": 6}}])
    assert recorded_specs(net) == [
        {"name": "layers.0.fc1", "builder": "test_shrink", "params": {"keep_out": 6}}
    ]


def test_specs_recorded_on_a_submodule_are_named_from_the_root():
    net = Net()
    apply_surgery(net.layers[1], [{"name": "fc2", "builder": "test_widen"}])
    assert recorded_specs(net) == [{"name": "layers.1.fc2", "builder": "test_widen", "params": {}}]


# -- optimizer fix-up ------------------------------------------------------------------------------


def _two_group_sgd(net: Net) -> torch.optim.SGD:
    weights = [p for n, p in net.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in net.named_parameters() if n.endswith("bias")]
    return torch.optim.SGD([{"params": weights, "lr": 0.1}, {"params": biases, "lr": 0.01}], momentum=0.9)


def test_sgd_momentum_of_untouched_params_is_identical_after_surgery():
    net = Net()
    opt = _two_group_sgd(net)
    train_a_step(net, opt)
    untouched = {n: p for n, p in net.named_parameters() if not n.startswith("layers.0.fc1")}
    momentum = {n: opt.state[p]["momentum_buffer"].clone() for n, p in untouched.items()}
    apply_surgery(net, [{"name": "layers.0.fc1", "builder": "test_shrink", "params": {"keep_out": 6}}], opt)
    for name, p in untouched.items():
        assert torch.equal(opt.state[p]["momentum_buffer"], momentum[name]), name


def test_removed_params_leave_the_groups_and_their_state_is_dropped():
    net = Net()
    opt = _two_group_sgd(net)
    train_a_step(net, opt)
    old_weight, old_bias = net.layers[0].fc1.weight, net.layers[0].fc1.bias
    record = apply_surgery(
        net, [{"name": "layers.0.fc1", "builder": "test_shrink", "params": {"keep_out": 6}}], opt
    )
    assert not any(p is old_weight or p is old_bias for p in all_params(opt))
    assert old_weight not in opt.state and old_bias not in opt.state
    assert record.removed_parameters == ["layers.0.fc1.weight", "layers.0.fc1.bias"]


def test_new_params_join_their_predecessors_group_with_its_lr():
    net = Net()
    opt = _two_group_sgd(net)
    apply_surgery(net, [{"name": "layers.0.fc1", "builder": "test_shrink", "params": {"keep_out": 6}}], opt)
    assert group_index(opt, net.layers[0].fc1.weight) == 0
    assert group_index(opt, net.layers[0].fc1.bias) == 1
    assert opt.param_groups[1]["lr"] == 0.01


def test_new_params_with_new_names_find_the_group_of_the_closest_name():
    net = Net()
    opt = _two_group_sgd(net)
    apply_surgery(net, [{"name": "head", "builder": "test_widen"}], opt)
    assert group_index(opt, net.head.main.weight) == 0
    assert group_index(opt, net.head.extra.weight) == 0
    assert group_index(opt, net.head.main.bias) == 1


def test_fixed_groups_equal_the_groups_built_fresh_from_the_changed_model():
    # what configure_optimizers builds after the specs are replayed on resume: the saved
    # optimizer state then lines up parameter by parameter
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    apply_surgery(
        net,
        [{"name": "layers.0", "builder": "test_scale"}, {"name": "layers.1.fc1", "builder": "test_widen"}],
        opt,
    )
    assert [id(p) for p in all_params(opt)] == [id(p) for p in net.parameters()]


def test_adam_state_survives_for_params_kept_by_identity_inside_a_wrapper():
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    train_a_step(net, opt)
    inner = net.layers[0]
    exp_avg = {id(p): opt.state[p]["exp_avg"].clone() for p in inner.parameters()}
    record = apply_surgery(net, [{"name": "layers.0", "builder": "test_scale"}], opt)
    assert net.layers[0].inner is inner
    assert record.removed_parameters == []
    assert record.added_parameters == ["layers.0.scale"]
    for p in inner.parameters():
        assert torch.equal(opt.state[p]["exp_avg"], exp_avg[id(p)])
    assert net.layers[0].scale not in opt.state  # fresh state, created at its first step


def test_training_continues_after_surgery_with_the_new_params_updated():
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    train_a_step(net, opt)
    apply_surgery(net, [{"name": "head", "builder": "test_widen"}], opt)
    extra = net.head.extra.weight.detach().clone()
    train_a_step(net, opt)
    assert not torch.equal(net.head.extra.weight, extra)


def test_params_of_a_module_no_optimizer_trained_stay_out_and_are_reported():
    net = Net()
    opt = torch.optim.SGD([p for n, p in net.named_parameters() if not n.startswith("head")], lr=0.1)
    with pytest.warns(UserWarning, match="nothing trains them"):
        record = apply_surgery(net, [{"name": "head", "builder": "test_widen"}], opt)
    assert record.unassigned_parameters == ["head.main.weight", "head.main.bias", "head.extra.weight"]
    assert not any(p is net.head.extra.weight for p in all_params(opt))


def test_new_module_moves_to_the_device_and_the_record_counts_parameters():
    net = Net()
    record = apply_surgery(
        net, [{"name": "layers.0.fc1", "builder": "test_shrink", "params": {"keep_out": 6}}]
    )
    assert record.replaced == [("layers.0.fc1", "Linear", "Linear")]
    assert record.parameters_before - record.parameters_after == 2 * 4 + 2  # two output rows + biases


# -- checkpoints -----------------------------------------------------------------------------------

SHRINK_AND_WIDEN = [
    {"name": "layers.0.fc1", "builder": "test_shrink", "params": {"keep_out": 6}},
    {"name": "layers.0.fc2", "builder": "test_shrink", "params": {"keep_out": 4, "keep_in": 6}},
    {"name": "head", "builder": "test_widen"},
]


def _saved_and_loaded(model: nn.Module) -> dict:
    buffer = io.BytesIO()
    torch.save(save_specs({"state_dict": model.state_dict()}, model), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # no pickled code needed to replay surgery


def test_checkpoint_replays_surgery_into_a_fresh_model_with_identical_outputs():
    torch.manual_seed(1)
    changed = Net()
    apply_surgery(changed, SHRINK_AND_WIDEN)
    with torch.no_grad():
        changed.head.extra.weight.normal_()  # trained away from its initial value
    checkpoint = _saved_and_loaded(changed)
    fresh = Net()
    reapply_from_checkpoint(fresh, checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])  # strict: the structure matches
    x = torch.randn(7, 3)
    assert torch.equal(fresh(x), changed(x))


def test_replaying_specs_leaves_the_global_rng_alone():
    checkpoint = _saved_and_loaded(_changed(SHRINK_AND_WIDEN))
    fresh = Net()
    torch.manual_seed(5)
    reapply_from_checkpoint(fresh, checkpoint)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))


def _changed(specs: list[dict]) -> Net:
    net = Net()
    apply_surgery(net, specs)
    return net


def test_reapplying_twice_does_nothing_the_second_time():
    checkpoint = _saved_and_loaded(_changed(SHRINK_AND_WIDEN))
    fresh = Net()
    reapply_from_checkpoint(fresh, checkpoint)
    second = reapply_from_checkpoint(fresh, checkpoint)
    assert second.replaced == []
    assert recorded_specs(fresh) == load_specs(checkpoint)


def test_a_model_with_other_surgery_refuses_the_checkpoint():
    checkpoint = _saved_and_loaded(_changed(SHRINK_AND_WIDEN))
    other = _changed([{"name": "embed", "builder": "test_widen"}])
    with pytest.raises(SurgeryError, match="freshly built model"):
        reapply_from_checkpoint(other, checkpoint)


def test_checkpoint_naming_an_unregistered_builder_says_what_to_import():
    checkpoint = {
        CHECKPOINT_KEY: {"version": 1, "specs": [{"name": "head", "builder": "gone", "params": {}}]}
    }
    with pytest.raises(SurgeryError, match="unknown replacement builder 'gone'"):
        reapply_from_checkpoint(Net(), checkpoint)


def test_a_model_without_surgery_writes_and_restores_nothing():
    checkpoint = save_specs({}, Net())
    assert CHECKPOINT_KEY not in checkpoint
    assert restore_surgery(Net(), checkpoint) is None


def test_unknown_record_version_is_refused():
    with pytest.raises(SurgeryError, match="version-1"):
        load_specs({CHECKPOINT_KEY: {"version": 99, "specs": []}})


def test_a_copy_of_a_changed_model_carries_its_specs():
    assert recorded_specs(copy.deepcopy(_changed(SHRINK_AND_WIDEN))) == load_specs(
        save_specs({}, _changed(SHRINK_AND_WIDEN))
    )


# -- in Lightning ----------------------------------------------------------------------------------


class LitNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = Net()

    def forward(self, x):
        return self.net(x)

    def on_save_checkpoint(self, checkpoint):
        save_specs(checkpoint, self)

    def on_load_checkpoint(self, checkpoint):
        restore_surgery(self, checkpoint)


def test_load_from_checkpoint_replays_surgery_through_on_load_checkpoint(tmp_path):
    module = LitNet()
    apply_surgery(module, [{**spec, "name": f"net.{spec['name']}"} for spec in SHRINK_AND_WIDEN])
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "changed.ckpt")
    loaded = LitNet.load_from_checkpoint(tmp_path / "changed.ckpt")
    x = torch.randn(4, 3)
    assert torch.equal(loaded(x), module(x))


class PlainLitNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = Net()

    def forward(self, x):
        return self.net(x)


def test_restore_hook_installed_on_the_instance_replays_before_the_state_dict():
    changed = PlainLitNet()
    apply_surgery(changed, [{**spec, "name": f"net.{spec['name']}"} for spec in SHRINK_AND_WIDEN])
    checkpoint = _saved_and_loaded(changed)
    fresh = PlainLitNet()
    restore_surgery_on_load(fresh)
    restore_surgery_on_load(fresh)  # idempotent
    fresh.on_load_checkpoint(checkpoint)  # what Lightning calls right before load_state_dict
    fresh.load_state_dict(checkpoint["state_dict"])
    x = torch.randn(4, 3)
    assert torch.equal(fresh(x), changed(x))


def test_a_module_with_the_restore_hook_still_pickles():
    module = PlainLitNet()
    restore_surgery_on_load(module)
    copied = pickle.loads(pickle.dumps(module))
    assert recorded_specs(copied) == []
    assert callable(copied.on_load_checkpoint)


class WidenHeadAtStep(pl.Callback):
    """Surgery mid-run, the way a technique does it: on the live optimizers, between steps."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.extra_after_surgery: torch.Tensor | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and self.extra_after_surgery is None:
            apply_surgery(pl_module, [{"name": "net.head", "builder": "test_widen"}], trainer.optimizers)
            self.extra_after_surgery = pl_module.net.head.extra.weight.detach().clone()


class TrainableLitNet(PlainLitNet):
    def training_step(self, batch, batch_idx):
        return self(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-2)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1.0 + step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def test_surgery_mid_run_keeps_training_the_new_parameters_on_the_live_optimizer():
    module, surgeon = TrainableLitNet(), WidenHeadAtStep(step=2)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(24, 3)), batch_size=4)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=5, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[surgeon],
    )  # fmt: skip
    trainer.fit(module, data)
    assert not torch.equal(module.net.head.extra.weight, surgeon.extra_after_surgery)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-2 / 6)
