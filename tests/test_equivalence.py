"""fp32 equivalence of each path with an independent implementation given the same weights (rel. error <= 1e-5)."""

import math

import pytest
import torch
from transformers import Idefics2VisionConfig, LlamaConfig, LlamaForCausalLM, WhisperConfig
from transformers.models.idefics2.modeling_idefics2 import Idefics2VisionTransformer
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from megrezo.modeling_megrezo import MegrezO
from megrezo.tiny import build_tokenizer, sized_config
from megrezo.vision import strip_patch_mask


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


@pytest.fixture(scope="module")
def model() -> MegrezO:
    torch.manual_seed(1)
    config = sized_config("tiny", build_tokenizer())
    model = MegrezO(config).eval()
    # Random norms and biases, so a mix-up of weight and bias or of two norms cannot hide behind ones and zeros.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("norm.weight", "ln_q.weight", "ln_kv.weight", "ln_post.weight", "_ln.weight",
                              "layer_norm1.weight", "layer_norm2.weight", "post_layernorm.weight")):
                param.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                param.normal_(0, 0.1)
    return model


def image_to_strip(image: torch.Tensor, patch: int = 14) -> torch.Tensor:
    """[3, h*p, w*p] -> [3, p, h*w*p], patches row-major: the processor's layout, written independently here."""
    channels, height, width = image.shape
    rows, cols = height // patch, width // patch
    patches = [image[:, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] for r in range(rows) for c in range(cols)]
    return torch.cat(patches, dim=2)


def test_llm_path_equals_plain_llama(model):
    cfg = model.config
    plain = LlamaForCausalLM(LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps, rope_theta=5000000.0, tie_word_embeddings=False,
    )).eval()
    plain.load_state_dict({k.removeprefix("llm."): v for k, v in model.state_dict().items() if k.startswith("llm.")})
    ids = torch.randint(0, 256, (2, 37))
    with torch.no_grad():
        ours = model(data={"input_ids": ids}).logits
        theirs = plain(input_ids=ids).logits
    assert rel_error(ours, theirs) <= 1e-5


def test_vision_tower_equals_idefics2_on_an_unpadded_slice(model):
    vcfg = model.config.vision_config
    reference = Idefics2VisionTransformer(Idefics2VisionConfig(
        hidden_size=vcfg.hidden_size, intermediate_size=vcfg.intermediate_size,
        num_hidden_layers=vcfg.num_hidden_layers, num_attention_heads=vcfg.num_attention_heads,
        patch_size=vcfg.patch_size, image_size=vcfg.image_size, hidden_act=vcfg.hidden_act,
        layer_norm_eps=vcfg.layer_norm_eps,
    )).eval()
    missing, unexpected = reference.load_state_dict(model.vision.vpm.state_dict(), strict=False)
    assert missing == [] and unexpected == []
    rows, cols = 5, 7
    image = torch.rand(3, rows * 14, cols * 14) * 2 - 1
    with torch.no_grad():
        theirs = reference(
            pixel_values=image[None], patch_attention_mask=torch.ones(1, rows, cols, dtype=torch.bool)
        ).last_hidden_state
        ours = model.vision.vpm(
            image_to_strip(image)[None], torch.tensor([[rows, cols]]), torch.ones(1, rows * cols, dtype=torch.bool)
        )
    assert rel_error(ours, theirs) <= 1e-5


def whisper_with_weights(encoder, acfg, positions: int) -> WhisperEncoder:
    """transformers' WhisperEncoder holding `encoder`'s weights, for inputs of exactly 2 * `positions` mel frames
    (Whisper insists on that length, which makes it the reference for a clip cut to 2*T1 frames)."""
    whisper = WhisperEncoder(WhisperConfig(
        d_model=acfg.n_state, encoder_layers=acfg.n_layer, encoder_attention_heads=acfg.n_head,
        encoder_ffn_dim=4 * acfg.n_state, num_mel_bins=acfg.n_mels, max_source_positions=positions,
        activation_function="gelu",
    )).eval()
    mapped = {
        "conv1.weight": encoder.conv1.weight, "conv1.bias": encoder.conv1.bias,
        "conv2.weight": encoder.conv2.weight, "conv2.bias": encoder.conv2.bias,
        "embed_positions.weight": encoder.positional_embedding[:positions],
        "layer_norm.weight": encoder.ln_post.weight, "layer_norm.bias": encoder.ln_post.bias,
    }
    for i, block in enumerate(encoder.blocks):
        pairs = {
            "self_attn.q_proj": block.attn.query, "self_attn.k_proj": block.attn.key,
            "self_attn.v_proj": block.attn.value, "self_attn.out_proj": block.attn.out,
            "self_attn_layer_norm": block.attn_ln, "fc1": block.mlp[0], "fc2": block.mlp[2],
            "final_layer_norm": block.mlp_ln,
        }
        for name, module in pairs.items():
            for key, tensor in module.state_dict().items():
                mapped[f"layers.{i}.{name}.{key}"] = tensor
    whisper.load_state_dict(mapped, strict=True)
    return whisper


def normed_frames(encoder, mel: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
    """Our transformer output with Whisper's final LayerNorm (ours applies `ln_post` after the pool)."""
    frames = encoder.encode_frames(mel, t1)
    return torch.nn.functional.layer_norm(
        frames, (frames.shape[-1],), encoder.ln_post.weight, encoder.ln_post.bias, encoder.ln_post.eps
    )


def test_audio_stack_equals_whisper_encoder(model):
    encoder, acfg = model.audio.audio, model.config.audio_config
    whisper = whisper_with_weights(encoder, acfg, acfg.n_ctx)
    mel = torch.randn(1, acfg.n_mels, 3000)
    with torch.no_grad():
        theirs = whisper(mel).last_hidden_state
        ours = normed_frames(encoder, mel, torch.tensor([1500]))
    assert rel_error(ours, theirs) <= 1e-5


@pytest.mark.parametrize("t1s", [[50], [13], [1500, 50, 13]], ids=["1s", "0.25s", "batch of 30s+1s+0.25s"])
def test_each_clip_enters_the_convolutions_cut_to_2_t1_frames(model, t1s):
    """The frame-edge rule: clip a is computed as Whisper computes its mel features cut to 2*T1 frames, so the
    convolution's right padding at the clip's last frame is zero, whatever follows in the padded 3000 frames and
    whatever else is in the batch."""
    encoder, acfg = model.audio.audio, model.config.audio_config
    mel = torch.randn(len(t1s), acfg.n_mels, 3000)
    with torch.no_grad():
        ours = normed_frames(encoder, mel, torch.tensor(t1s))
        for index, t1 in enumerate(t1s):
            theirs = whisper_with_weights(encoder, acfg, t1)(mel[index : index + 1, :, : 2 * t1]).last_hidden_state
            assert rel_error(ours[index : index + 1, :t1], theirs) <= 1e-5, f"clip {index} (T1 = {t1})"


def test_audio_output_is_pool_norm_projection_between_begin_and_end(model):
    encoder = model.audio.audio
    mel = torch.randn(1, 128, 3000)
    t1, t2 = 50, 25
    with torch.no_grad():
        span = encoder(mel, torch.tensor([[t1, t2]]))
        frames = encoder.encode_frames(mel, torch.tensor([t1]))[0]
        pooled = torch.stack([(frames[2 * j] + frames[2 * j + 1]) / 2 for j in range(t2)])
        expected_mid = encoder.proj(encoder.ln_post(pooled))
    assert span.shape == (t2 + 2, model.config.hidden_size)
    assert torch.equal(span[0], encoder.audio_bos_eos_token.weight[0])
    assert torch.equal(span[-1], encoder.audio_bos_eos_token.weight[1])
    assert rel_error(span[1:-1], expected_mid) <= 1e-5


def test_short_clip_does_not_depend_on_padding(model):
    """A 1 s clip alone equals the same clip beside a 30 s clip (trimming and masking change nothing)."""
    encoder = model.audio.audio
    short, long = torch.randn(1, 128, 3000), torch.randn(1, 128, 3000)
    with torch.no_grad():
        alone = encoder(short, torch.tensor([[50, 25]]))
        both = encoder(torch.cat([long, short]), torch.tensor([[1500, 750], [50, 25]]))
    assert rel_error(both[752:], alone) <= 1e-5


def sincos_by_hand(dim: int, row: int, col: int) -> torch.Tensor:
    quarter = dim // 4
    values = []
    for coordinate in (col, row):
        freqs = [1.0 / 10000 ** (i / quarter) for i in range(quarter)]
        values += [math.sin(coordinate * f) for f in freqs] + [math.cos(coordinate * f) for f in freqs]
    return torch.tensor(values)


def resampler_by_hand(resampler, features: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """One slice [rows*cols, kv_dim] -> [queries, dim], written out step by step."""
    dim = resampler.embed_dim
    heads = resampler.attn.num_heads
    head_dim = dim // heads

    def layer_norm(x, ln):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias

    kv = layer_norm(features @ resampler.kv_proj.weight.T, resampler.ln_kv)
    positions = torch.stack([sincos_by_hand(dim, r, c) for r in range(rows) for c in range(cols)])
    keys_in = kv + positions
    queries_in = layer_norm(resampler.query, resampler.ln_q)
    w_q, w_k, w_v = resampler.attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = resampler.attn.in_proj_bias.chunk(3)
    q, k, v = queries_in @ w_q.T + b_q, keys_in @ w_k.T + b_k, kv @ w_v.T + b_v
    outputs = []
    for h in range(heads):
        part = slice(h * head_dim, (h + 1) * head_dim)
        weights = torch.softmax(q[:, part] @ k[:, part].T / math.sqrt(head_dim), dim=-1)
        outputs.append(weights @ v[:, part])
    attended = torch.cat(outputs, dim=-1) @ resampler.attn.out_proj.weight.T + resampler.attn.out_proj.bias
    return layer_norm(attended, resampler.ln_post) @ resampler.proj


def test_resampler_equals_step_by_step_computation(model):
    resampler = model.vision.resampler
    rows, cols = 3, 5
    features = torch.randn(rows * cols, model.config.vision_config.hidden_size)
    with torch.no_grad():
        ours = resampler(features[None], torch.tensor([[rows, cols]]), torch.ones(1, rows * cols, dtype=torch.bool))
        expected = resampler_by_hand(resampler, features, rows, cols)
    assert rel_error(ours[0], expected) <= 1e-5


def test_padding_is_harmless_for_each_slice(model):
    """A batch of slices of different sizes gives each slice the output it gets alone."""
    sizes = [(4, 6), (2, 3), (7, 5)]
    longest = max(r * c for r, c in sizes)
    strips = [torch.rand(3, 14, r * c * 14) * 255 for r, c in sizes]
    padded = torch.zeros(len(sizes), 3, 14, longest * 14)
    for n, strip in enumerate(strips):
        padded[n, :, :, : strip.shape[-1]] = strip
    tgt = torch.tensor(sizes)
    batch = {"pixel_values": padded, "tgt_sizes": tgt, "patch_attention_mask": strip_patch_mask(tgt, longest)[:, None]}
    with torch.no_grad():
        together = model.vision(batch)
        for n, strip in enumerate(strips):
            alone = model.vision({"pixel_values": strip[None], "tgt_sizes": tgt[n : n + 1]})
            assert rel_error(together[n], alone[0]) <= 1e-5
