"""Megrez-3B-Omni: a Llama-2 language model that reads image and audio vectors in place of filler tokens.

`MegrezO` owns three parts under the release's names: `llm` (transformers' `LlamaForCausalLM`, unchanged),
`vision` (SigLIP + resampler) and `audio` (Whisper encoder + projector). The only multimodal step is
`compose_embeddings`: embed the tokens, then overwrite the positions that the batch's bounds point at with the
media vectors. Everything after that is the plain language model, so training, the KV cache and generation are
transformers' own.
"""

import copy
import threading

import torch
from torch import nn
from transformers import GenerationConfig, LlamaForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .audio import AudioEncoder, AudioTower, whisper_sinusoids
from .audio_lengths import conv_frames  # noqa: F401  (module cache, see compat.py)
from .audio_processing import load_audio  # noqa: F401  (module cache, see compat.py)
from .batch_collation import collate  # noqa: F401  (module cache, see compat.py)
from .batch_format import MegrezOBatch, validate_audio_encoding, validate_image_encoding
from .chat_template import CHAT_TEMPLATE  # noqa: F401  (module cache, see compat.py)
from .compat import weight_init as init
from .compiled_decode import StaticCachePool, compile_config, static_cache_length
from .configuration_megrezo import MegrezOConfig
from .conversation import validate_conversation  # noqa: F401  (module cache, see compat.py)
from .conversation_media import decode_media  # noqa: F401  (module cache, see compat.py)
from .cpu_kernels import copy_off_checkpoint_file, use_cpu_encoder_choice, use_cpu_kernels
from .cpu_plan import CpuPlan, cpu_plan
from .image_processing_megrezo import MegrezOImageProcessor  # noqa: F401  (module cache, see compat.py)
from .import_noise import drop_import_noise  # noqa: F401  (module cache, see compat.py)
from .literal_text import tokenize_literal  # noqa: F401  (module cache, see compat.py)
from .modeling_navit_siglip import NavitSiglipVisionTransformer  # noqa: F401  (module cache, see compat.py)
from .processing_megrezo import MegrezOProcessor
from .prompt_layout import expand_placeholders  # noqa: F401  (module cache, see compat.py)
from .reply_thread import stream_beside  # noqa: F401  (module cache, see compat.py)
from .resampler import Resampler
from .sampling_settings import check_setting, check_settings
from .special_tokens import EOS, PAD, TURN_END
from .streaming import stream_reply
from .training_labels import assistant_labels  # noqa: F401  (module cache, see compat.py)
from .vision import VisionTower


def media_positions(bounds: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch index, position) of every slot that bounds rows (b, s, e) cover: positions s+offset .. e-1, row by
    row. Image bounds use offset 0, audio bounds 1 (the start token keeps its own embedding)."""
    batch_ids, positions = [], []
    for b, start, end in bounds.tolist():
        span = torch.arange(start + offset, end)
        positions.append(span)
        batch_ids.append(torch.full_like(span, b))
    return torch.cat(batch_ids), torch.cat(positions)


class MegrezOPreTrainedModel(PreTrainedModel):
    config_class = MegrezOConfig
    config: MegrezOConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "SiglipEncoderLayer", "AudioBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _skip_keys_device_placement = ["past_key_values"]

    def _init_weights(self, module: nn.Module) -> None:
        """Random initialisation for weights a checkpoint does not provide (tiny test models, new training)."""
        super()._init_weights(module)
        if isinstance(module, AudioEncoder):
            init.copy_(module.positional_embedding, whisper_sinusoids(*module.positional_embedding.shape))
        elif isinstance(module, Resampler):
            init.trunc_normal_(module.query, std=0.02)
            init.normal_(module.proj, std=module.embed_dim**-0.5)
            init.ones_(module.ln_q.weight)
            init.zeros_(module.ln_q.bias)


class MegrezO(MegrezOPreTrainedModel):
    def __init__(self, config: MegrezOConfig):
        super().__init__(config)
        # PreTrainedModel resolves the attention implementation on the top config only; the setter hands the
        # resolved value on to the vision and audio sub-configs.
        config._attn_implementation = config._attn_implementation
        self.llm = LlamaForCausalLM(config)
        self.vision = VisionTower(config)
        self.audio = AudioTower(config.audio_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.llm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.llm.get_output_embeddings()

    def compose_embeddings(self, batch: MegrezOBatch) -> torch.Tensor:
        """[B, L, hidden] input embeddings: text embeddings, with image vectors at embeds[b, s:e] of each image bound
        and audio span vectors at embeds[b, s+1:e] of each audio bound. The whole batch is checked first, so a
        malformed one fails with a ValueError before any encoder runs."""
        media = self.media_embeddings(batch)
        embeds = self.get_input_embeddings()(batch["input_ids"])
        for where, vectors in media:
            embeds = embeds.index_put(where, vectors.to(embeds.dtype))
        return embeds

    def media_embeddings(self, batch: MegrezOBatch) -> list[tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]]:
        """((batch indices, positions), vectors) of the batch's images, then of its audio: the input embeddings that
        replace the filler tokens there. The whole batch is checked before any encoder runs."""
        input_ids = batch["input_ids"]
        image, audio = batch.get("image_encoding") or {}, batch.get("audio_encoding") or {}
        seq_shape = tuple(input_ids.shape)
        validate_image_encoding(image, seq_shape, self.config.query_num)
        validate_audio_encoding(audio, seq_shape)

        media = []
        if image.get("pixel_values") is not None and len(image["pixel_values"]) > 0:
            media.append((media_positions(image["image_bounds"], 0), self.vision(image).flatten(0, 1)))
        if audio.get("input_audios") is not None and len(audio["input_audios"]) > 0:
            media.append((media_positions(audio["audio_bounds"], 1), self.audio(audio)))
        return media

    def forward(
        self,
        data: MegrezOBatch | None = None,
        labels: torch.Tensor | None = None,
        **llm_kwargs,
    ) -> CausalLMOutputWithPast:
        """Training and scoring entry point in the authors' style: `model(data=batch)`. Labels come from
        `labels=` or from `batch["labels"]`; the loss is the LLM's shifted cross-entropy, ignoring -100."""
        if data is None:
            data = {k: llm_kwargs.pop(k) for k in ("input_ids", "image_encoding", "audio_encoding") if k in llm_kwargs}
        if "input_ids" not in data:
            raise ValueError("MegrezO.forward needs data={'input_ids': ..., ...} (the MegrezOBatch format)")
        labels = labels if labels is not None else data.get("labels")
        for key in ("attention_mask", "position_ids"):
            if data.get(key) is not None:
                llm_kwargs.setdefault(key, data[key])
        return self.llm(inputs_embeds=self.compose_embeddings(data), labels=labels, **llm_kwargs)

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_encoding: dict | None = None,
        audio_encoding: dict | None = None,
        generation_config: GenerationConfig | None = None,
        compile: bool = False,
        **generation_kwargs,
    ) -> torch.Tensor:
        """Composes the embeddings once, then lets the LLM decode with its KV cache. Returns only the new tokens
        [B, new].

        The LLM gets the prompt's token ids beside its embeddings. The embeddings feed the first step; the ids are
        what logits processors see, so a repetition penalty counts the prompt's tokens and the generated ones, as
        vLLM and transformers (generating from ids) do. Padding is no part of a prompt: in those ids a row's pad
        positions repeat its first real token, which the penalty counts anyway, so padding changes nothing.

        `compile=True` decodes through a static KV cache with the one-token step compiled by `torch.compile`
        (compiled_decode.py); the prompt, images and audio still run eagerly. The first request of each new shape
        pays for compiling.
        """
        batch: MegrezOBatch = {
            "input_ids": input_ids,
            "image_encoding": image_encoding,
            "audio_encoding": audio_encoding,
        }
        embeds = self.compose_embeddings(batch)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        first_real = attention_mask.argmax(dim=1, keepdim=True)
        prompt_ids = torch.where(attention_mask.bool(), input_ids, input_ids.gather(1, first_real))
        inputs = {"input_ids": prompt_ids, "inputs_embeds": embeds, "attention_mask": attention_mask,
                  "generation_config": generation_config, **generation_kwargs}
        if not compile:
            sequences = self.llm.generate(**inputs)
        else:
            needed = self._generated_length(input_ids.shape[1], generation_config, generation_kwargs)
            length = static_cache_length(needed, self.config.max_position_embeddings)
            with StaticCachePool.lock:
                if getattr(self, "_static_caches", None) is None:
                    self._static_caches = StaticCachePool()
                inputs["past_key_values"] = self._static_caches.take(
                    self.llm.config, len(input_ids), length, self.dtype, self.device
                )
                if generation_config is None:
                    inputs["compile_config"] = compile_config(self.device)
                else:
                    inputs["generation_config"] = copy.copy(generation_config)
                    inputs["generation_config"].compile_config = compile_config(self.device)
                sequences = self.llm.generate(**inputs)
        return sequences[:, input_ids.shape[1] :]

    def _generated_length(self, prompt_length: int, config: GenerationConfig | None, kwargs: dict) -> int:
        """Prompt plus reply positions that `llm.generate` will fill at most, read as it reads them: keyword
        arguments before `config`, `config` before the LLM's own generation config; max_new_tokens before
        max_length; the model's positions where none is set."""
        sources = [kwargs, vars(config or self.llm.generation_config)]
        max_new_tokens = next((s["max_new_tokens"] for s in sources if s.get("max_new_tokens") is not None), None)
        if max_new_tokens is not None:
            return prompt_length + max_new_tokens
        return next((s["max_length"] for s in sources if s.get("max_length") is not None),
                    self.config.max_position_embeddings)

    def use_cpu_kernels(self, plan: CpuPlan | None = None) -> dict[str, int]:
        """Switches the model's bfloat16 and torchao int8 layers to the CPU kernels that `plan` (default: this CPU's
        `cpu_plan()`, see cpu_plan.py) names per part: on CPUs with bfloat16 instructions the LLM's layers go to
        oneDNN; elsewhere the encoders and the LLM's prefill multiply in float32 from the bfloat16 weights. Float32
        layers stay as they are. Inference only: reload the checkpoint to train, move or save the model. The plan is
        kept as `model.cpu_plan`; returns how many layers of each kernel class were put in. The other weights then get
        memory of their own, so that the memory-mapped checkpoint file is released."""
        self.cpu_plan = plan or cpu_plan()
        counts = use_cpu_kernels(self.llm, self.cpu_plan)
        counts["encoder_float32_linears"] = (use_cpu_encoder_choice(self.vision, self.cpu_plan.vision)
                                             + use_cpu_encoder_choice(self.audio, self.cpu_plan.audio))
        copy_off_checkpoint_file(self)
        return counts

    _chat_processor_lock = threading.Lock()

    def chat_processor(self) -> MegrezOProcessor:
        """The processor of the checkpoint this model was loaded from, loaded once and kept on the model (a lock
        keeps two threads from loading it twice). The model config's audio marker tokens and position limit win over
        the processor's saved ones. The folder's code already runs as this model, so its image processor's remote
        code is trusted too."""
        with self._chat_processor_lock:
            if getattr(self, "_chat_processor", None) is None:
                if not self.name_or_path:
                    raise ValueError("this model was not loaded from a folder: pass processor= to chat()")
                saved = MegrezOProcessor.from_pretrained(self.name_or_path, trust_remote_code=True)
                self._chat_processor = MegrezOProcessor(
                    saved.image_processor,
                    saved.tokenizer,
                    saved.audio_feature_extractor,
                    chat_template=saved.chat_template,
                    audio_start_token=self.config.audio_start_token,
                    audio_end_token=self.config.audio_end_token,
                    max_positions=self.config.max_position_embeddings,
                )
            return self._chat_processor

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling: bool = False,
        max_new_tokens: int = 512,
        streamer=None,
        processor: MegrezOProcessor | None = None,
        return_tokens: bool = False,
        stream: bool = False,
        compile: bool = False,
        **generation_overrides,
    ) -> str | list[str] | list[int] | list[list[int]]:
        """Reply to one conversation (a list of `{"role", "content"}` dicts) or to a list of conversations, which
        run as one left-padded batch and give a list of replies.

        Greedy by default; `sampling=True` uses top_p 0.8, top_k 100, temperature 0.7 (the release's demo values);
        `sampling=True, temperature=0` is greedy, as in vLLM and the OpenAI API. repetition_penalty is 1.2 in both
        and penalises the tokens of the prompt and of the reply (see `generate`). `generation_overrides` that are
        `GenerationConfig` fields win over these; the others (`logits_processor`, `stopping_criteria`, ...) go to
        `generate` as they are.
        Decoding stops at `<|turn_end|>` or `<|eos|>`; the reply is the text before the stop token, decoded without
        special tokens. `streamer` (e.g. a fresh `TextIteratorStreamer` per call) works with one conversation.
        `return_tokens=True` returns the generated ids before the stop token instead of text. `stream=True` (one
        conversation) returns an iterator of the reply's text pieces instead: the chat runs in a thread, and its
        error, if it fails, is raised in the loop over the pieces. A `streamer` of your own is ended when the chat
        fails, so that a loop over it stops; the error is raised where `chat` was called.
        Generation settings are checked first (`megrezo.sampling_settings`): a bad one is a ValueError naming it.
        `compile=True` decodes through a static KV cache with the decode step compiled (see `generate`): the same
        tokens; whether sooner depends on the device (bench/README.md, "Compiled decoding").
        A reply never runs past the model's last position: `max_new_tokens` is lowered to the positions the prompt
        leaves (4,096 minus the prompt's length), and a prompt that leaves none is refused.
        """
        if stream:
            if streamer is not None or return_tokens:
                raise ValueError("stream=True yields the reply's text: leave out streamer= and return_tokens=")
            if isinstance(messages, list | tuple) and messages and not isinstance(messages[0], dict):
                raise ValueError(f"stream=True works with one conversation, got {len(messages)}")
            tokenizer = (processor or self.chat_processor()).tokenizer
            return stream_reply(
                lambda own: self._reply(
                    messages, sampling, max_new_tokens, own, processor, False, compile, **generation_overrides
                ),
                tokenizer,
            )
        try:
            return self._reply(
                messages, sampling, max_new_tokens, streamer, processor, return_tokens, compile, **generation_overrides
            )
        except BaseException:
            end = getattr(streamer, "end", None)
            if callable(end):  # a loop over the streamer in another thread stops instead of waiting for ever
                end()
            raise

    def _reply(
        self,
        messages: list[dict] | list[list[dict]],
        sampling: bool = False,
        max_new_tokens: int = 512,
        streamer=None,
        processor: MegrezOProcessor | None = None,
        return_tokens: bool = False,
        compile: bool = False,
        **generation_overrides,
    ) -> str | list[str] | list[int] | list[list[int]]:
        """`chat` without `stream`: the reply (or replies) once generation is done."""
        if not isinstance(messages, list | tuple):
            raise ValueError(
                f"messages must be a conversation (a list of message dicts) or a list of conversations, "
                f"got {type(messages).__name__}"
            )
        max_new_tokens = check_setting("max_new_tokens", max_new_tokens)
        generation_overrides = check_settings(generation_overrides)
        processor = processor or self.chat_processor()
        single = len(messages) > 0 and isinstance(messages[0], dict)
        conversations = [messages] if single else list(messages)
        if streamer is not None and not all(callable(getattr(streamer, name, None)) for name in ("put", "end")):
            raise ValueError(
                f"streamer must be a transformers streamer (with put() and end()), e.g. TextIteratorStreamer, got "
                f"{type(streamer).__name__}"
            )
        if streamer is not None and len(conversations) != 1:
            raise ValueError(f"streamer= works with one conversation, got {len(conversations)}")
        batch = processor(conversations, add_generation_prompt=True, padding_side="left")
        prompt_length = batch["input_ids"].shape[1]
        positions_left = self.config.max_position_embeddings - prompt_length
        if positions_left < 1:
            raise ValueError(
                f"prompt is {prompt_length} tokens and leaves no room for a reply in the model's "
                f"{self.config.max_position_embeddings} positions"
            )

        def to_model(value):
            if isinstance(value, dict):
                return {key: to_model(item) for key, item in value.items()}
            if isinstance(value, torch.Tensor):
                return value.to(self.device, self.dtype if value.is_floating_point() else value.dtype)
            return value

        batch = to_model(batch)
        stop_ids = [processor.token_ids[TURN_END], processor.token_ids[EOS]]
        settings = {
            "max_new_tokens": min(max_new_tokens, positions_left),
            "do_sample": sampling,
            "repetition_penalty": 1.2,
            "eos_token_id": stop_ids,
            "pad_token_id": processor.token_ids[PAD],
        }
        if sampling:
            settings.update(top_p=0.8, top_k=100, temperature=0.7)
        defaults = GenerationConfig()
        settings.update({key: value for key, value in generation_overrides.items() if hasattr(defaults, key)})
        if settings["do_sample"] and settings.get("temperature") == 0:
            settings.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        generate_kwargs = {key: value for key, value in generation_overrides.items() if not hasattr(defaults, key)}
        generated = self.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            image_encoding=batch.get("image_encoding"),
            audio_encoding=batch.get("audio_encoding"),
            generation_config=GenerationConfig(**settings),
            streamer=streamer,
            compile=compile,
            **generate_kwargs,
        )
        replies = []
        for row in generated.tolist():
            stops = [index for index, token in enumerate(row) if token in stop_ids]
            tokens = row[: stops[0]] if stops else row
            replies.append(tokens if return_tokens else processor.tokenizer.decode(tokens, skip_special_tokens=True))
        return replies[0] if single else replies


MegrezO.register_for_auto_class("AutoModelForCausalLM")
