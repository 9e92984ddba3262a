"""SANA 1.5 methods (depth growth, depth pruning, inference-time scaling, CAME-8bit) on PyTorch Lightning."""

import logging

__version__ = "0.1.0"

BNB_KERNEL_FETCH_FAILED = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _not_bnb_kernel_fetch(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(BNB_KERNEL_FETCH_FAILED)


# On AVX512-BF16 CPUs, importing bitsandbytes (diffusers does) fetches an optional 4-bit CPU matmul kernel from the
# Hub and logs its failure; we never run 4-bit matmuls and run offline (bitsandbytes 0.50 has no switch to skip it).
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_not_bnb_kernel_fetch)
