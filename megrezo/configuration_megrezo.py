"""Configuration of Megrez-3B-Omni.

The released `config.json` keeps the language model's fields at the top level (Llama-2 names) and nests the vision
and audio settings, so `MegrezOConfig` is a `LlamaConfig` with two sub-configs and a few multimodal fields. That
lets the same config object drive transformers' `LlamaForCausalLM` unchanged.
"""

from transformers import LlamaConfig, PreTrainedConfig, SiglipVisionConfig


class MegrezOAudioConfig(PreTrainedConfig):
    """Whisper-large-v3 encoder in the Qwen-Audio layout, with the names of the released `audio_config`."""

    model_type = "megrezo_audio"

    n_mels: int = 128
    n_ctx: int = 1500
    n_state: int = 1280
    n_head: int = 20
    n_layer: int = 32
    output_dim: int = 2560
    avg_pool: bool = True
    add_audio_bos_eos_token: bool = True


class MegrezOConfig(LlamaConfig):
    """Top-level config: the Llama fields of the language model plus `vision_config` and `audio_config`.

    Fields beyond the release (all optional, with the release's behaviour as default):
    - `resampler_num_heads`: heads of the resampler's cross-attention. The release has none; its 20 heads for
      width 2560 are `hidden_size // 128`, which is the default.
    - `audio_start_token` / `audio_end_token`: the strings around an audio span. Not recovered from the release
      (a [choice] of docs/contract.md); the tokenizer of a checkpoint decides the ids.
    """

    model_type = "megrezo"
    sub_configs = {"vision_config": SiglipVisionConfig, "audio_config": MegrezOAudioConfig}

    vision_config: dict | SiglipVisionConfig | None = None
    audio_config: dict | MegrezOAudioConfig | None = None
    query_num: int = 64
    patch_size: int = 14
    vision_batch_size: int = 8
    drop_vision_last_layer: bool = False
    max_sequence_length: int = 4096
    resampler_num_heads: int | None = None
    audio_start_token: str = "<|audio_start|>"
    audio_end_token: str = "<|audio_end|>"

    def __post_init__(self, **kwargs):
        if self.vision_config is None:
            self.vision_config = SiglipVisionConfig(
                hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                patch_size=14, image_size=980, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
            )
        elif isinstance(self.vision_config, dict):
            vision = {k: v for k, v in self.vision_config.items() if k != "model_type"}
            self.vision_config = SiglipVisionConfig(**vision)
        if self.audio_config is None:
            self.audio_config = MegrezOAudioConfig()
        elif isinstance(self.audio_config, dict):
            self.audio_config = MegrezOAudioConfig(**self.audio_config)
        if self.resampler_num_heads is None:
            self.resampler_num_heads = max(self.hidden_size // 128, 1)
        super().__post_init__(**kwargs)


MegrezOConfig.register_for_auto_class()
