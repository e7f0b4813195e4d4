"""Built-in parameter-efficient fine-tuning techniques (plugin module of the `lightning_eff` entry-point
group), installed as ``lightning_eff.plugins.peft``. The layers come from the PyPI library ``peft``
(optional: ``pip install 'lightning-eff[peft]'``), always imported absolutely as ``import peft``."""

from lightning_eff._shadow_guard import defer_to_installed

# With the checkout's plugins/ folder on sys.path (a script run from it, a notebook started there) this
# folder is also visible as top-level `peft`, the name of the PyPI library we build on: that name
# belongs to the library, never to us (see lightning_eff/_shadow_guard.py).
if not defer_to_installed(__name__, __file__, "lightning_eff.plugins.peft"):
    from lightning_eff.hookspecs import hookimpl
    from lightning_eff.lazy import lazy_exports

    # Imported on first use: discovering this plugin must import neither Lightning nor peft.
    _EXPORTS = {
        "LoRA": ".lora",
        "merge_lora": ".adapters",
        "lora_layers": ".adapters",
        "lora_targets": ".targets",
    }
    __all__ = sorted(_EXPORTS)
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

    @hookimpl
    def leff_register_techniques(register):
        from .lora import LoRA

        register(LoRA)
