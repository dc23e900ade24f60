"""Which number format a model's image side runs in on a CPU, chosen from the CPU's flags.

Measured on this project's 2-core Xeon (AVX512-BF16 and VNNI, no AMX; docs/performance.md):
int8 (dynamic quantization of the vision tower's linear layers, fbgemm's VNNI kernels) ran
CLIP ViT-B/32 1.7x as fast as float32, its embeddings within cosine 0.9995; bfloat16 ran
matrix products at 0.6x of float32 there (without AMX torch has no fast bfloat16 GEMM), and
EfficientNet-Lite0's convolutions no faster. So:

* ``amx_bf16``: bfloat16 (AMX tiles; not measured here, no such CPU was at hand);
* ``avx512_vnni`` or ``avx_vnni``: int8 where the model has linear layers to quantize;
* otherwise float32, as before.

The offline model keeps float32 unless forced: its convolutions have no int8 kernels here
(int8 reaches only its classifier, 0.3% of its work) and bfloat16 missed the agreement
target on the development sets (top-10 overlap 0.86-0.96; benchmarks/precision_quality.py).

The texts (and so the caption bank's vectors, cached per model) stay float32 in every case;
CUDA keeps float16. ``IMGSEARCH_PRECISION`` = auto (default), float32, bfloat16 or int8
overrides the choice (tests force it both ways). Nothing here imports torch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

from imgsearch.errors import ImgsearchError

# torch says, once per process, that its quantization API is moving to torchao: chatter
# for a user (the CLI keeps stderr for one line). Filtered here, at import, for good: a
# ``catch_warnings`` in a decode thread would put back filters set later by another thread.
warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per")

ENV = "IMGSEARCH_PRECISION"
CHOICES = ("auto", "float32", "bfloat16", "int8")
BF16_FLAGS = frozenset({"amx_bf16"})
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none: not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):  # x86, ARM
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_precision(flags: frozenset[str] | None = None, env: Mapping[str, str] | None = None) -> str:
    """float32, bfloat16 or int8 for a model's images on this CPU (see the module's note)."""
    wanted = (os.environ if env is None else env).get(ENV, "auto").strip().lower() or "auto"
    if wanted not in CHOICES:
        raise ImgsearchError(f"{ENV}={wanted!r}: use one of {', '.join(CHOICES)}")
    if wanted != "auto":
        return wanted
    flags = cpu_flags() if flags is None else flags
    if flags & BF16_FLAGS:
        return "bfloat16"
    if flags & INT8_FLAGS:
        return "int8"
    return "float32"


def forced_precision(env: Mapping[str, str] | None = None) -> str | None:
    """The precision ``IMGSEARCH_PRECISION`` forces (float32, bfloat16 or int8); None for
    auto: a backend that gains nothing from reduced precision then keeps float32."""
    wanted = (os.environ if env is None else env).get(ENV, "auto").strip().lower() or "auto"
    return None if wanted == "auto" else cpu_precision(frozenset(), {ENV: wanted})


def quantize_linear(module, names: list[str]) -> bool:  # noqa: ANN001 - a torch module
    """Dynamic int8 quantization of the linear layers under the children ``names`` of
    ``module``, in place (weights int8 per output channel, activations per batch); whether
    any was found. Layers elsewhere (a text tower) stay float32."""
    import torch

    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError:  # a torch without it (it is moving to torchao): float32 then
        return False

    if not names or not any(
        isinstance(m, torch.nn.Linear) for n in names for m in getattr(module, n).modules()
    ):
        return False
    # Only those children, gathered in a container of their own: the swap then reaches a
    # child that is itself a linear layer (CLIP's visual_projection) and nothing else.
    chosen = torch.nn.ModuleDict({n: getattr(module, n) for n in names})
    with warnings.catch_warnings():  # as above, also where the filters were reset (pytest)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor")
        quantize_dynamic(chosen, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
    for name in names:
        setattr(module, name, chosen[name])
    return True
