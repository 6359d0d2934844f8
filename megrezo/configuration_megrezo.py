"""Configuration of Megrez-3B-Omni.

The released `config.json` keeps the language model's fields at the top level (Llama-2 names) and nests the vision
and audio settings, so `MegrezOConfig` is a `LlamaConfig` with two sub-configs and a few multimodal fields. That
lets the same config object drive transformers' `LlamaForCausalLM` unchanged.
"""

import json

from transformers import LlamaConfig, SiglipVisionConfig

from .compat import PreTrainedConfig, legacy_rope_kwargs, release_config_fields
from .import_noise import drop_import_noise

# The config is the first of a checkpoint's files that transformers runs (also as remote code, where the package's
# __init__ never runs), and it runs before transformers imports torchao: drop torchao's import-time lines from here.
drop_import_noise()


class MegrezOAudioConfig(PreTrainedConfig):
    """Whisper-large-v3 encoder in the Qwen-Audio layout, with the names of the released `audio_config`."""

    model_type = "megrezo_audio"

    def __init__(
        self,
        n_mels: int = 128,
        n_ctx: int = 1500,
        n_state: int = 1280,
        n_head: int = 20,
        n_layer: int = 32,
        output_dim: int = 2560,
        avg_pool: bool = True,
        add_audio_bos_eos_token: bool = True,
        **kwargs,
    ):
        self.n_mels = n_mels
        self.n_ctx = n_ctx
        self.n_state = n_state
        self.n_head = n_head
        self.n_layer = n_layer
        self.output_dim = output_dim
        self.avg_pool = avg_pool
        self.add_audio_bos_eos_token = add_audio_bos_eos_token
        super().__init__(**kwargs)


class MegrezOConfig(LlamaConfig):
    """Top-level config: the Llama fields of the language model plus `vision_config` and `audio_config`.

    Fields beyond the release (all optional, with the release's behaviour as default):
    - `resampler_num_heads`: heads of the resampler's cross-attention. The release has none; its 20 heads for
      width 2560 are `hidden_size // 128`, which is the default.
    - `audio_start_token` / `audio_end_token`: the strings around an audio span. Not recovered from the release
      (a [choice] of docs/contract.md); the tokenizer of a checkpoint decides the ids.

    Written out (config.json) with the release's field names, which every transformers version
    reads (compat.py).
    """

    model_type = "megrezo"
    sub_configs = {"vision_config": SiglipVisionConfig, "audio_config": MegrezOAudioConfig}

    def __init__(
        self,
        vision_config: dict | SiglipVisionConfig | None = None,
        audio_config: dict | MegrezOAudioConfig | None = None,
        query_num: int = 64,
        patch_size: int = 14,
        vision_batch_size: int = 8,
        drop_vision_last_layer: bool = False,
        max_sequence_length: int = 4096,
        resampler_num_heads: int | None = None,
        audio_start_token: str = "<|audio_start|>",
        audio_end_token: str = "<|audio_end|>",
        **kwargs,
    ):
        if vision_config is None:
            vision_config = SiglipVisionConfig(
                hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                patch_size=14, image_size=980, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
            )
        elif isinstance(vision_config, dict):
            vision_config = SiglipVisionConfig(**{k: v for k, v in vision_config.items() if k != "model_type"})
        if audio_config is None:
            audio_config = MegrezOAudioConfig()
        elif isinstance(audio_config, dict):
            audio_config = MegrezOAudioConfig(**{k: v for k, v in audio_config.items() if k != "model_type"})
        self.vision_config = vision_config
        self.audio_config = audio_config
        self.query_num = query_num
        self.patch_size = patch_size
        self.vision_batch_size = vision_batch_size
        self.drop_vision_last_layer = drop_vision_last_layer
        self.max_sequence_length = max_sequence_length
        self.audio_start_token = audio_start_token
        self.audio_end_token = audio_end_token
        super().__init__(**legacy_rope_kwargs(kwargs))
        self.resampler_num_heads = resampler_num_heads or max(self.hidden_size // 128, 1)

    def to_json_string(self, use_diff: bool = True) -> str:
        return json.dumps(release_config_fields(json.loads(super().to_json_string(use_diff))), indent=2,
                          sort_keys=True) + "\n"


MegrezOConfig.register_for_auto_class()
