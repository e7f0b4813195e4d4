"""Drop third-party log lines that say nothing to a lightning-eff user, on every run.

Each filter matches one known message exactly; anything else those loggers say still shows.
- torchao tries to load its optional CUDA extensions (``_C_mxfp8``, ``_C_cutlass_90a``) at import and
  logs a failure for each on a machine without them: expected on CPU, not actionable.
- torch's pytree warns that torchao registers Enum classes the old way (a torchao/torch version
  skew), on every import of torchao.
"""

from __future__ import annotations

import logging
import re

NOISE = {
    "torchao": re.compile(r"Failed to load .*\.so\b"),
    "torch.utils._pytree": re.compile(r".* is an Enum subclass and is now natively supported by torch\.compile"),
}


class _DropMessage(logging.Filter):
    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def silence_known_noise() -> None:
    """Idempotent: installs one filter per noisy logger."""
    for name, pattern in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) for f in logger.filters):
            logger.addFilter(_DropMessage(pattern))
