"""Native CPU matrix kernels for the language model's linear layers, for decoding on a CPU.

Decoding one token reads every weight of the language model once, so its speed is set by how close each matrix-
vector product comes to the memory bandwidth. On x86 CPUs, `torch.nn.functional.linear` on a bfloat16 weight
reaches about half of it for one row of input; the same oneDNN kernel on a weight reordered once into its blocked
layout comes close to it. A weight-only int8 weight read by `torch._weight_int8pack_mm` (which converts the int8
values in registers instead of building a bfloat16 copy of the matrix, as torchao's eager int8 path does) moves
half the bytes, but converting costs arithmetic: it pays where the cores convert faster than the memory delivers
bfloat16 (on two cores it does not, see bench/README.md). `use_cpu_kernels` swaps the LLM's linear layers for those
two kernels in place.

transformers memory-maps the checkpoint file on the CPU, and the mapping lives as long as any tensor points into it.
Once the linear weights are reordered or quantized copies, the file pages they were read from would stay resident
beside the copies (about doubling the resident memory of a model in bfloat16), so `copy_off_checkpoint_file` gives
the remaining tensors memory of their own and lets the mapping go.

The swapped model is for inference: its weights are no longer ordinary tensors, so reload the checkpoint to train,
move it to another device or save it.
"""

import torch
from torch import nn


class PackedBf16Linear(nn.Module):
    """A bfloat16 linear layer whose weight oneDNN has reordered once for small batches (decode)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed_weight, self.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


INT8_KERNEL_MAX_ROWS = 16
"""Up to this many input rows (decode) the int8 kernel runs; longer inputs (prefill) are compute-bound, and a
bfloat16 copy of the weight made for the call multiplies them faster."""


class Int8WeightLinear(nn.Module):
    """A linear layer with an int8 weight and one scale per output row (torchao's weight-only int8 layout),
    computed by torch's native int8 weight-only kernel for decode-sized inputs."""

    def __init__(self, weight_int8: torch.Tensor, row_scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        self.weight_int8 = weight_int8.contiguous()
        self.row_scale = row_scale.reshape(-1).to(torch.bfloat16).contiguous()
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        if rows.shape[0] <= INT8_KERNEL_MAX_ROWS:
            out = torch._weight_int8pack_mm(rows, self.weight_int8, self.row_scale)
        else:
            out = torch.nn.functional.linear(rows, self.weight_int8.to(torch.bfloat16)) * self.row_scale
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def int8_rowwise_parts(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(int8 values [out, in], scale per output row) of a torchao weight-only int8 tensor quantized per row, or
    None for any other weight."""
    qdata, scale, block_size = (getattr(weight, name, None) for name in ("qdata", "scale", "block_size"))
    if qdata is None or qdata.dtype != torch.int8 or qdata.dim() != 2:
        return None
    if getattr(weight, "act_quant_kwargs", None) is not None or list(block_size) != [1, qdata.shape[1]]:
        return None
    return qdata, scale


def use_cpu_kernels(llm: nn.Module) -> dict[str, int]:
    """Replaces, in place, each `nn.Linear` under `llm` whose weight is bfloat16 (by `PackedBf16Linear`) or
    torchao weight-only int8 per row (by `Int8WeightLinear`). Other layers (float32, other quantizations) stay as
    they are. Returns how many layers of each kind were replaced."""
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError("use_cpu_kernels needs a torch build with oneDNN (mkldnn)")
    counts = {"bf16": 0, "int8": 0}
    targets = [(name, module) for name, module in llm.named_modules() if isinstance(module, nn.Linear)]
    for name, linear in targets:
        if linear.weight.device.type != "cpu":
            raise ValueError(f"use_cpu_kernels is for a model on the CPU; {name} is on {linear.weight.device}")
        int8_parts = int8_rowwise_parts(linear.weight)
        if int8_parts is not None:
            bias = None if linear.bias is None else linear.bias.detach()
            replacement, kind = Int8WeightLinear(*int8_parts, bias), "int8"
        elif type(linear.weight.data) is torch.Tensor and linear.weight.dtype == torch.bfloat16:
            replacement, kind = PackedBf16Linear(linear), "bf16"
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(llm.get_submodule(parent_name) if parent_name else llm, child, replacement)
        counts[kind] += 1
    return counts


def copy_off_checkpoint_file(model: nn.Module) -> None:
    """Gives every CPU parameter and buffer of `model` memory of its own, so that no tensor keeps the memory-mapped
    checkpoint file alive. Tied parameters stay tied (the `Parameter` objects are kept, only their data moves)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type == "cpu":
                tensor.data = tensor.data.clone()
