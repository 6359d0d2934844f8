"""CPU matrix kernels for the model's linear layers, chosen per part by cpu_plan.CpuPlan.

Decoding one token reads every weight of the language model once, so its speed is set by how close each matrix-
vector product comes to the memory bandwidth. On x86 CPUs with bfloat16 instructions, `torch.nn.functional.linear`
on a bfloat16 weight reaches about half of it for one row of input; the same oneDNN kernel on a weight reordered once
into its blocked layout comes close to it (`PackedBf16Linear`). A weight-only int8 weight read by
`torch._weight_int8pack_mm` (which converts the int8 values in registers instead of building a bfloat16 copy of the
matrix, as torchao's eager int8 path does) moves half the bytes, but converting costs arithmetic: it pays where the
cores convert faster than the memory delivers bfloat16 (on two cores it does not, see bench/README.md).

Where the CPU has no bfloat16 instructions, torch emulates bfloat16 arithmetic, and long inputs (a prompt, image
patches, audio frames) multiply several times faster in float32. `Bf16WeightLinear` keeps the weight in bfloat16
and, for such inputs, converts it to float32 into a reused buffer as the layer runs (`blockwise_linear`):
the arithmetic of float32 at the memory of bfloat16.

transformers memory-maps the checkpoint file on the CPU, and the mapping lives as long as any tensor points into it.
Once the linear weights are reordered or quantized copies, the file pages they were read from would stay resident
beside the copies (about doubling the resident memory of a model in bfloat16), so `copy_off_checkpoint_file` gives
the remaining tensors memory of their own and lets the mapping go.

The swapped model is for inference: its weights are no longer ordinary tensors, so reload the checkpoint to train,
move it to another device or save it.
"""

import threading

import torch
from torch import nn

from .cpu_plan import FROM_BF16, PACKED, CpuPlan, PartChoice


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


BLOCK_ELEMENTS = 1 << 25
"""Weight elements converted at a time by `blockwise_linear`: every matrix of the release but its output head
converts in one piece (one product of full size, as fast as a float32 weight's); the buffer takes up to 128 MB in
float32 per thread."""

_buffers = threading.local()


def conversion_buffer(dtype: torch.dtype, numel: int) -> torch.Tensor:
    """A buffer of this thread, reused from call to call: writing into memory already touched costs no page faults,
    which a fresh allocation of the size of a weight pays on every call."""
    buffers = _buffers.__dict__.setdefault("by_dtype", {})
    if dtype not in buffers or buffers[dtype].numel() < numel:
        with torch.inference_mode(False):  # an ordinary tensor: writable inside and outside inference mode
            buffers[dtype] = torch.empty(numel, dtype=dtype)
    return buffers[dtype][:numel]


def blockwise_linear(rows: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """rows [N, in] times weight [out, in] transposed, computed in `dtype`, converting the weight (any dtype) to
    `dtype` into a reused buffer, in blocks of output rows when it is larger than BLOCK_ELEMENTS."""
    out_features, in_features = weight.shape
    block = max(1, min(out_features, BLOCK_ELEMENTS // in_features))
    buffer = conversion_buffer(dtype, block * in_features).view(block, in_features)
    x = rows.to(dtype)
    outputs = []
    for start in range(0, out_features, block):
        part = buffer[: min(block, out_features - start)]
        part.copy_(weight[start : start + part.shape[0]])
        outputs.append(torch.nn.functional.linear(x, part))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)


class Bf16WeightLinear(nn.Module):
    """A linear layer that keeps its weight in bfloat16 and multiplies inputs of more than `bf16_max_rows` rows in
    float32 (`blockwise_linear`), for CPUs that emulate bfloat16 arithmetic; smaller inputs (decode) multiply in
    bfloat16, where reading the weight, not the arithmetic, sets the pace. The output has the input's dtype."""

    def __init__(self, linear: nn.Linear, bf16_max_rows: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # Buffers, so that copy_off_checkpoint_file moves them off the memory-mapped checkpoint file.
        self.register_buffer("weight", linear.weight.detach())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())
        self.bf16_max_rows = bf16_max_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] <= self.bf16_max_rows:
            out = torch.nn.functional.linear(rows.to(self.weight.dtype), self.weight, self.bias)
        else:
            out = blockwise_linear(rows, self.weight, torch.float32)
            if self.bias is not None:
                out = out + self.bias.float()
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


INT8_KERNEL_MAX_ROWS = 16
"""Up to this many input rows (decode) the int8 kernel runs; longer inputs (prefill) are compute-bound, and a
copy of the weight converted into a reused buffer multiplies them faster."""


class Int8WeightLinear(nn.Module):
    """A linear layer with an int8 weight and one scale per output row (torchao's weight-only int8 layout),
    computed by torch's native int8 weight-only kernel for decode-sized inputs and in `prefill_dtype` (bfloat16 or
    float32, whichever the CPU multiplies faster) for longer ones."""

    def __init__(self, weight_int8: torch.Tensor, row_scale: torch.Tensor, bias: torch.Tensor | None,
                 prefill_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        self.weight_int8 = weight_int8.contiguous()
        self.row_scale = row_scale.reshape(-1).to(torch.bfloat16).contiguous()
        self.bias = bias
        self.prefill_dtype = prefill_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] <= INT8_KERNEL_MAX_ROWS:
            out = torch._weight_int8pack_mm(rows.to(torch.bfloat16).contiguous(), self.weight_int8, self.row_scale)
        else:
            out = blockwise_linear(rows, self.weight_int8, self.prefill_dtype) * self.row_scale.to(self.prefill_dtype)
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


def is_bf16_linear(module: nn.Module) -> bool:
    """An `nn.Linear` (not a subclass, such as the output projection `nn.MultiheadAttention` reads directly) with an
    ordinary bfloat16 weight."""
    weight = getattr(module, "weight", None)
    return type(module) is nn.Linear and type(weight.data) is torch.Tensor and weight.dtype == torch.bfloat16


def replace_module(root: nn.Module, name: str, replacement: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, replacement)


def use_cpu_kernels(llm: nn.Module, plan: CpuPlan) -> dict[str, int]:
    """Replaces, in place, each `nn.Linear` under `llm` whose weight is bfloat16 or torchao weight-only int8 per row
    by the kernel `plan` names for the language model: `PackedBf16Linear` (oneDNN, where bfloat16 is native),
    `Bf16WeightLinear` (float32 prefill from bfloat16 weights), or `Int8WeightLinear`. Other layers (float32, other
    quantizations, bfloat16 left to torch's own kernel) stay as they are. Returns how many layers of each class were
    put in."""
    counts = {"PackedBf16Linear": 0, "Bf16WeightLinear": 0, "Int8WeightLinear": 0}
    targets = [(name, module) for name, module in llm.named_modules() if isinstance(module, nn.Linear)]
    for name, linear in targets:
        if linear.weight.device.type != "cpu":
            raise ValueError(f"use_cpu_kernels is for a model on the CPU; {name} is on {linear.weight.device}")
        int8_parts = int8_rowwise_parts(linear.weight)
        if int8_parts is not None:
            bias = None if linear.bias is None else linear.bias.detach()
            replacement = Int8WeightLinear(*int8_parts, bias, prefill_dtype=plan.llm_prefill.compute_dtype)
        elif is_bf16_linear(linear) and plan.llm_decode.kernel == PACKED:
            replacement = PackedBf16Linear(linear)
        elif is_bf16_linear(linear) and plan.llm_prefill.kernel == FROM_BF16:
            replacement = Bf16WeightLinear(linear, bf16_max_rows=plan.decode_max_rows)
        else:
            continue
        replace_module(llm, name, replacement)
        counts[type(replacement).__name__] += 1
    return counts


def use_cpu_encoder_choice(encoder: nn.Module, choice: PartChoice) -> int:
    """Makes a bfloat16 encoder (the vision tower, the audio encoder) compute as `choice` says. For float32 compute,
    its linear layers become `Bf16WeightLinear` layers that always multiply in float32 (their weights, most of the
    encoder, stay bfloat16) and its other tensors (norms, convolutions, embeddings, the resampler's attention: a
    small part) are converted to float32, so the whole encoder runs in float32; the encoders cast their input to
    their first layer's dtype. Returns how many linear layers were replaced (0 for bfloat16 compute)."""
    if choice.kernel != FROM_BF16:
        return 0
    linears = [(name, module) for name, module in encoder.named_modules() if is_bf16_linear(module)]
    for name, linear in linears:
        replace_module(encoder, name, Bf16WeightLinear(linear, bf16_max_rows=0))
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, Bf16WeightLinear):
                continue
            for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                if tensor.dtype == torch.bfloat16:
                    tensor.data = tensor.data.float()
    return len(linears)


def copy_off_checkpoint_file(model: nn.Module) -> None:
    """Gives every CPU parameter and buffer of `model` memory of its own, so that no tensor keeps the memory-mapped
    checkpoint file alive. Tied parameters stay tied (the `Parameter` objects are kept, only their data moves)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type == "cpu":
                tensor.data = tensor.data.clone()
