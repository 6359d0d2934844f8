"""The resampler computes the same, in the same memory, whether its weights require grad or not. Inference and a
frozen vision tower in finetuning run it with frozen weights; torch's matmul then copied each projection weight once
per patch position when handed MultiheadAttention's transposed views of bfloat16 tensors (18 GB and 80 s for one
image at full size)."""

import torch

from megrezo.resampler import Resampler
from megrezo.vision import strip_patch_mask


def allocated_bytes(run) -> tuple[int, torch.Tensor]:
    """Bytes that torch allocated on the CPU during run() (every allocation counted, frees ignored), and its result."""
    with torch.profiler.profile(profile_memory=True) as profile:
        result = run()
    return sum(max(event.self_cpu_memory_usage, 0) for event in profile.events()), result


def test_frozen_weights_allocate_as_little_as_trainable_ones():
    torch.manual_seed(0)
    resampler = Resampler(num_queries=64, embed_dim=512, num_heads=8, kv_dim=384).eval()
    for parameter in resampler.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    resampler.to(torch.bfloat16)  # the checkpoint's dtype
    sizes = torch.tensor([[20, 20], [12, 30], [7, 9]])
    mask = strip_patch_mask(sizes, 400)
    features = torch.randn(3, 400, 384, dtype=torch.bfloat16)
    with torch.no_grad():
        trainable_bytes, trainable = allocated_bytes(lambda: resampler(features, sizes, mask))
    resampler.requires_grad_(False)
    with torch.inference_mode():
        frozen_bytes, frozen = allocated_bytes(lambda: resampler(features, sizes, mask))
    torch.testing.assert_close(frozen, trainable)
    position_copies = 400 * 512 * 512 * 2  # one bfloat16 projection weight per patch position
    assert frozen_bytes < 2 * trainable_bytes < position_copies, (frozen_bytes, trainable_bytes)
