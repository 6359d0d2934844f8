"""Lines that libraries print while being imported, on every run, about things a user cannot change.

transformers imports torchao whenever it is installed (its quantizer registry), even for a command that quantizes
nothing, and torchao then (a) tries to load the CUDA-only kernels its wheel ships (`_C_mxfp8`, `_C_cutlass_90a`),
which fails with a CPU build of torch and is logged as "Failed to load ...", and (b) registers enums with torch's
pytree, which torch 2.13 logs as deprecated. Both are dropped here, and only these: the first only when torch has
no CUDA (where those libraries cannot load), so a GPU user still hears about a broken torchao install.
"""

import logging
import sys


def _cpu_only_torch() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and getattr(torch.version, "cuda", None) is None


class _DropCudaKernelLoadFailures(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Failed to load ") and ".so" in message and _cpu_only_torch())


class _DropEnumConstantDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "is an Enum subclass and is now natively supported" not in record.getMessage()


def drop_import_noise() -> None:
    """Attach the filters to the two loggers (idempotent); must run before transformers is imported."""
    for name, line_filter in (("torchao", _DropCudaKernelLoadFailures), ("torch.utils._pytree", _DropEnumConstantDeprecation)):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, line_filter) for existing in logger.filters):
            logger.addFilter(line_filter())
