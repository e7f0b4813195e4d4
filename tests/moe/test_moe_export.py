import pytest
import torch
from moe_models import VOCAB, tiny_decoder, tiny_llama

from lightning_eff.plugins.moe.export import export_problems, save_as_transformers_moe
from lightning_eff.plugins.moe.upcycle import build_moe, find_mlps, install_moe


def upcycle(model, every_n=1, **kwargs):
    generator = torch.Generator().manual_seed(0)
    for mlp in find_mlps(model, every_n=every_n):
        install_moe(model, mlp, build_moe(mlp, generator=generator, **kwargs))
    return model


@pytest.mark.parametrize("init", ["drop", "virtual_group"])
def test_upcycled_llama_saves_as_mixtral_with_the_same_logits(tmp_path, init):
    import transformers

    model = upcycle(tiny_llama(), num_experts=4, top_k=2, init=init, virtual_groups=2, router_init_std=0.5)
    with torch.no_grad():  # trained-looking experts: make them differ
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ids = torch.randint(0, VOCAB, (2, 12))
    expected = model(ids).logits
    save_as_transformers_moe(model, tmp_path / "mixtral")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "mixtral").eval()
    assert type(loaded).__name__ == "MixtralForCausalLM"
    assert loaded.config.num_local_experts == 4 and loaded.config.num_experts_per_tok == 2
    assert (loaded(ids).logits - expected).abs().max().item() < 1e-5


def test_upcycled_mistral_saves_as_mixtral_and_qwen2_is_refused_with_the_supported_list(tmp_path):
    import transformers

    model = upcycle(tiny_decoder("Mistral"), num_experts=4, top_k=2, router_init_std=0.5)
    ids = torch.randint(0, VOCAB, (2, 12))
    expected = model(ids).logits
    save_as_transformers_moe(model, tmp_path / "mixtral")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "mixtral").eval()
    assert type(loaded).__name__ == "MixtralForCausalLM"
    assert (loaded(ids).logits - expected).abs().max().item() < 1e-5
    problems = export_problems(upcycle(tiny_decoder("Qwen2"), num_experts=2, top_k=1))
    assert "Qwen2ForCausalLM has no transformers MoE counterpart" in problems[0] and "MistralForCausalLM" in problems[0]


def test_export_explains_what_mixtral_cannot_hold():
    model = upcycle(tiny_llama(num_hidden_layers=2), every_n=2, num_experts=4, top_k=2, capacity_factor=1.0)
    problems = export_problems(model)
    assert "layers [0] are dense" in problems[0]
    with pytest.raises(ValueError, match="every_n=1"):
        save_as_transformers_moe(model, "unused")
    assert "shared expert" in export_problems(upcycle(tiny_llama(), num_experts=2, top_k=1, shared_expert=True))[0]
