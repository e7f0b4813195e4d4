"""Built-in techniques, installed as ``lightning_eff.plugins``; each family is a plugin module."""

from lightning_eff._shadow_guard import defer_to_installed

# From the repository root this folder is also visible as top-level `plugins`: that name belongs to
# whatever distribution of that name is installed, never to us (see _shadow_guard).
defer_to_installed(__name__, __file__, "lightning_eff.plugins")
