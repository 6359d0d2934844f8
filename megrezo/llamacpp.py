"""Chat with the language model in llama.cpp: `LlamaCppMegrezO.load(checkpoint, gguf)` or
`load_chat_model(checkpoint, backend="llama.cpp", gguf=...)`, then `model.chat(...)` as with the transformers model.

`LlamaCppMegrezO` is `MegrezO` with one part swapped: the vision and audio encoders still run in torch, from the
checkpoint, but the language model runs in llama.cpp from a GGUF file that `python -m megrezo.gguf export` wrote.
`chat` is MegrezO's own, so the processor, the input checks and their errors, the settings (greedy by default, the
repetition penalty over prompt and reply tokens, the sampling values, the stop tokens) and the decoding of replies
are the same code; only `generate` differs. It feeds the prompt to llama.cpp in runs: text runs as token ids (llama.cpp
embeds them from the GGUF), image and audio runs as the encoders' vectors (llama.cpp's embeddings batch), at the
positions the processor gave them. Then it decodes a token at a time and picks each token from llama.cpp's logits
with transformers' own logits processors, as `generate` would. A batch of conversations runs one after another.

llama-cpp-python is built from source on install: `make setup-llamacpp` (see README).
"""

import ctypes
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.stopping_criteria import StoppingCriteriaList

from .batch_format import MegrezOBatch
from .configuration_megrezo import MegrezOConfig
from .cpu_kernels import use_cpu_encoder_choice
from .cpu_plan import cpu_plan
from .modeling_megrezo import MegrezO

SETUP_HINT = "the llama.cpp backend needs llama-cpp-python and gguf: run `make setup-llamacpp` (builds llama.cpp)"

DECODING_FIELDS = {"max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
                   "suppress_tokens", "eos_token_id", "pad_token_id", "bos_token_id"}
"""GenerationConfig fields this backend decodes by; fields about transformers' own KV cache mean nothing here."""
CACHE_FIELDS = {"use_cache", "cache_implementation", "compile_config", "transformers_version"}

N_BATCH = 512
"""Prompt positions per llama.cpp decode call (a longer run is fed in pieces)."""


class GGUFError(ValueError):
    """A GGUF file that cannot serve as this checkpoint's language model, with the reason."""


_library = None
_log_sinks: list[Callable[[str], None]] = []
_log_lock = threading.Lock()


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _on_llama_log(level: int, text: bytes, user_data) -> None:
    """llama.cpp's log goes to the active sinks (errors for messages, quantization progress), else nowhere."""
    line = text.decode("utf-8", "replace") if text else ""
    for sink in list(_log_sinks):
        sink(line)


def llama_cpp_library():
    """The `llama_cpp` module with its backend started and its log captured, or an ImportError that says how to
    install it."""
    global _library
    if _library is None:
        try:
            import llama_cpp
        except ImportError as error:
            raise ImportError(SETUP_HINT) from error
        llama_cpp.llama_log_set(_on_llama_log, None)
        llama_cpp.llama_backend_init()
        _library = llama_cpp
    return _library


class LogLines:
    def __init__(self):
        self.lines: list[str] = []

    def errors(self) -> str:
        """The last lines llama.cpp logged, which state why a call failed."""
        text = "".join(self.lines).strip().splitlines()
        return " | ".join(line.strip() for line in text[-4:])


@contextmanager
def llama_log_capture(on_line: Callable[[str], None] | None = None) -> Iterator[LogLines]:
    """Collects what llama.cpp logs inside the block (and hands each piece to `on_line`)."""
    log = LogLines()

    def sink(line: str) -> None:
        log.lines.append(line)
        del log.lines[:-200]
        if on_line is not None:
            on_line(line)

    with _log_lock:
        _log_sinks.append(sink)
    try:
        yield log
    finally:
        with _log_lock:
            _log_sinks.remove(sink)


def read_gguf_header(path: Path) -> dict:
    """The metadata of a GGUF file, after checking that the file is whole: a missing, truncated or foreign file
    gets a GGUFError that names it, before llama.cpp sees it."""
    try:
        from gguf import GGUFReader
    except ImportError as error:
        raise ImportError(SETUP_HINT) from error
    if not path.is_file():
        raise GGUFError(f"{path}: no such GGUF file (write one with `python -m megrezo.gguf export`)")
    with open(path, "rb") as file:
        if file.read(4) != b"GGUF":
            raise GGUFError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
    size = path.stat().st_size
    try:
        reader = GGUFReader(path)
        end = max(int(tensor.data_offset) + int(tensor.n_bytes) for tensor in reader.tensors)
        fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.ggml.")}
    except Exception as error:  # the reader fails in many ways on a damaged file; all mean the same to a user
        raise GGUFError(f"{path} is damaged or truncated ({type(error).__name__}: {error}); export it again") from error
    if end > size:
        raise GGUFError(f"{path} is truncated: its tensors need {end} bytes, the file has {size}; export it again")
    return fields


def check_gguf_matches(path: Path, config: MegrezOConfig) -> None:
    """The GGUF must be a llama language model of this checkpoint's shape."""
    fields = read_gguf_header(path)
    arch = fields.get("general.architecture")
    if arch != "llama":
        raise GGUFError(f"{path} holds a {arch!r} model, not the llama language model of a Megrez-3B-Omni checkpoint")
    expected = {
        "llama.embedding_length": config.hidden_size,
        "llama.block_count": config.num_hidden_layers,
        "llama.attention.head_count": config.num_attention_heads,
        "llama.attention.head_count_kv": config.num_key_value_heads,
        "llama.vocab_size": config.vocab_size,
    }
    wrong = [f"{key} {fields.get(key)} (checkpoint: {value})" for key, value in expected.items() if fields.get(key) != value]
    if wrong:
        raise GGUFError(f"{path} was exported from another model: {'; '.join(wrong)}")


def model_params(llama_cpp):
    """llama.cpp's defaults, but the file read into memory instead of mapped: on the CPU llama.cpp repacks most
    weights into a layout of its own, and a mapped file would keep their original pages resident beside the copy
    (the full size's q4_k_m: 3.2 GB resident instead of 2.2)."""
    params = llama_cpp.llama_model_default_params()
    params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
    return params


class LlamaCppLanguageModel:
    """A GGUF language model in llama.cpp with one sequence of context: `feed` prompt runs (token ids or input
    vectors), then `step` one token at a time. Not thread-safe: the owner serialises calls."""

    def __init__(self, path: str | Path, n_ctx: int, n_threads: int | None = None):
        llama_cpp = llama_cpp_library()
        self.lib = llama_cpp
        path = Path(path)
        n_threads = n_threads or len(os.sched_getaffinity(0))
        self.model = self.ctx = None
        self.token_batch = self.embd_batch = None
        with llama_log_capture() as log:
            self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params(llama_cpp))
        if not self.model:
            raise GGUFError(f"llama.cpp could not load {path}: {log.errors() or 'no reason given'}")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = N_BATCH
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        if llama_cpp.llama_model_ftype(self.model) == llama_cpp.LLAMA_FTYPE_ALL_F32:
            # An all-float32 file computes in float32 throughout: llama.cpp's defaults keep the KV cache in float16
            # and its CPU flash attention rounds to float16 (relative logit error ~1e-3 instead of ~1e-6).
            params.type_k = params.type_v = llama_cpp.GGML_TYPE_F32
            params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        with llama_log_capture() as log:
            self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            self.close()
            raise RuntimeError(f"llama.cpp could not create a context for {path}: {log.errors()}")
        self.n_ctx = n_ctx
        self.n_embd = llama_cpp.llama_model_n_embd(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.token_batch = self._batch(0)
        self.embd_batch = self._batch(self.n_embd)

    def _batch(self, n_embd: int):
        batch = self.lib.llama_batch_init(N_BATCH, n_embd, 1)
        for i in range(N_BATCH):
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
        return batch

    def reset(self) -> None:
        """Forget the context (the next `feed` starts a new sequence at position 0)."""
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)

    def feed(self, run: list[int] | np.ndarray, start: int, logits: bool) -> torch.Tensor | None:
        """Appends a run at positions start.. : token ids (a list) or input vectors ([n, n_embd] float32). Returns
        the logits [vocab] after the run's last position when `logits`."""
        if start + len(run) > self.n_ctx:
            raise ValueError(f"the sequence would reach position {start + len(run)}, past the model's {self.n_ctx}")
        for offset in range(0, len(run), N_BATCH):
            piece = run[offset : offset + N_BATCH]
            last = offset + len(piece) == len(run)
            if isinstance(piece, np.ndarray):
                batch = self.embd_batch
                piece = np.ascontiguousarray(piece, dtype=np.float32)
                ctypes.memmove(batch.embd, piece.ctypes.data, piece.nbytes)
            else:
                batch = self.token_batch
                for i, token in enumerate(piece):
                    batch.token[i] = token
            for i in range(len(piece)):
                batch.pos[i] = start + offset + i
                batch.logits[i] = 0
            batch.logits[len(piece) - 1] = int(logits and last)
            batch.n_tokens = len(piece)
            with llama_log_capture() as log:
                status = self.lib.llama_decode(self.ctx, batch)
            if status != 0:
                raise RuntimeError(f"llama.cpp decode failed (status {status}): {log.errors()}")
        if not logits:
            return None
        values = self.lib.llama_get_logits_ith(self.ctx, -1)
        return torch.from_numpy(np.ctypeslib.as_array(values, shape=(self.n_vocab,)).copy())

    def step(self, token: int, position: int) -> torch.Tensor:
        """Logits [vocab] after appending one token at `position`."""
        return self.feed([token], position, logits=True)

    def close(self) -> None:
        lib = getattr(self, "lib", None)
        if lib is None:
            return
        for name in ("token_batch", "embd_batch"):
            if getattr(self, name, None) is not None:
                lib.llama_batch_free(getattr(self, name))
                setattr(self, name, None)
        if self.ctx:
            lib.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            lib.llama_model_free(self.model)
            self.model = None

    def __del__(self):
        if not sys.is_finalizing():  # at interpreter exit the library may already be gone; the OS frees all
            self.close()


def logits_processors(config: GenerationConfig, extra: LogitsProcessorList | None) -> LogitsProcessorList:
    """transformers' processors for these settings, in generate's order: the repetition penalty, suppressed
    tokens, the caller's own processors, then (when sampling) temperature, top-k and top-p."""
    processors = LogitsProcessorList()
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=config.repetition_penalty))
    if config.suppress_tokens:
        processors.append(SuppressTokensLogitsProcessor(config.suppress_tokens))
    processors.extend(extra or [])
    if config.do_sample:
        if config.temperature is not None and config.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k is not None and config.top_k != 0:
            processors.append(TopKLogitsWarper(top_k=config.top_k, min_tokens_to_keep=1))
        if config.top_p is not None and config.top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=config.top_p, min_tokens_to_keep=1))
    return processors


def check_generation_config(config: GenerationConfig) -> None:
    unsupported = sorted(set(config.to_diff_dict()) - DECODING_FIELDS - CACHE_FIELDS)
    if unsupported:
        raise ValueError(f"the llama.cpp backend does not support the generation settings {unsupported}")
    if not isinstance(config.max_new_tokens, int) or config.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {config.max_new_tokens!r}")


class LlamaCppMegrezO(MegrezO):
    """MegrezO whose language model runs in llama.cpp from a GGUF file; the encoders run in torch on the CPU."""

    @classmethod
    def load(cls, checkpoint: str | Path, gguf: str | Path, dtype: torch.dtype | str = "auto",
             n_threads: int | None = None) -> "LlamaCppMegrezO":
        """The GGUF's language model, checked to be of this checkpoint's shape, and the checkpoint's encoders in
        `dtype` ("auto": the checkpoint's own). Each encoder's weights are read when a request first needs it (a
        text chat never holds the 2 GB of encoders of the full size); the language-model weights of the checkpoint
        are never read. bfloat16 encoders compute as this CPU's plan says (cpu_plan.py): in float32 from their
        bfloat16 weights where the CPU lacks bfloat16 instructions, unless `dtype` asks for bfloat16 explicitly."""
        checkpoint, gguf = Path(checkpoint), Path(gguf)
        config = MegrezOConfig.from_pretrained(checkpoint)
        encoder_plan = cpu_plan("fastest" if dtype == "auto" else "bfloat16")
        if dtype == "auto":
            saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
            dtype = getattr(torch, saved.removeprefix("torch.")) if isinstance(saved, str) else saved
        check_gguf_matches(gguf, config)
        with torch.device("meta"):
            model = cls(config)
        model.llm = None
        model.eval()
        model.config.name_or_path = model.name_or_path = str(checkpoint)
        model.checkpoint, model.gguf_path, model.encoder_dtype = checkpoint, gguf, dtype
        model.cpu_plan = encoder_plan
        model._encoders_lock = threading.Lock()
        model._language_model_lock = threading.Lock()
        model.language_model = LlamaCppLanguageModel(gguf, config.max_position_embeddings, n_threads)
        return model

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The encoders' dtype (chat converts the processor's pixel and audio features to it)."""
        return self.encoder_dtype

    def load_encoder(self, name: str) -> None:
        """Reads the weights of the `vision` or `audio` encoder from the checkpoint, once."""
        from safetensors import safe_open

        from .gguf import checkpoint_files

        with self._encoders_lock:
            module = getattr(self, name)
            if not any(tensor.is_meta for tensor in module.state_dict(keep_vars=True).values()):
                return
            weights = {}
            for file in checkpoint_files(self.checkpoint):
                with safe_open(file, framework="pt") as tensors:
                    for key in tensors.keys():
                        if key.startswith(name + "."):
                            weights[key.removeprefix(name + ".")] = tensors.get_tensor(key).to(self.encoder_dtype)
            module.load_state_dict(weights, assign=True)
            missing = [key for key, tensor in module.state_dict(keep_vars=True).items() if tensor.is_meta]
            if missing:
                raise ValueError(f"{self.checkpoint} lacks the {name} weights {missing[:3]}")
            module.requires_grad_(False)
            use_cpu_encoder_choice(module, getattr(self.cpu_plan, name))

    def media_embeddings(self, batch: MegrezOBatch) -> list:
        """MegrezO's, with each encoder the batch needs loaded first."""
        if len((batch.get("image_encoding") or {}).get("pixel_values", [])) > 0:
            self.load_encoder("vision")
        if len((batch.get("audio_encoding") or {}).get("input_audios", [])) > 0:
            self.load_encoder("audio")
        return super().media_embeddings(batch)

    def use_cpu_kernels(self) -> dict[str, int]:
        """The language model is llama.cpp's; the encoders keep torch's kernels."""
        return {}

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_encoding: dict | None = None,
        audio_encoding: dict | None = None,
        generation_config: GenerationConfig | None = None,
        streamer=None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        compile: bool = False,
        **unsupported,
    ) -> torch.Tensor:
        """MegrezO.generate's contract (new tokens [B, new], rows that stop early padded with pad_token_id), with
        the language model in llama.cpp. Rows run one after another; `streamer` gets the prompt, then every new
        token, then `end()`, as from transformers' generate."""
        if compile:
            raise ValueError("compile=True compiles transformers' decode step; the llama.cpp backend has none to compile")
        if unsupported:
            raise ValueError(f"the llama.cpp backend does not take {sorted(unsupported)}")
        config = generation_config or GenerationConfig(max_new_tokens=20)
        check_generation_config(config)
        if streamer is not None and input_ids.shape[0] != 1:
            raise ValueError(f"streamer= works with one conversation, got {input_ids.shape[0]}")
        batch: MegrezOBatch = {"input_ids": input_ids, "image_encoding": image_encoding,
                               "audio_encoding": audio_encoding}
        media = self.media_embeddings(batch)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        stop_ids = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
        stop_ids = [token for token in stop_ids if token is not None]
        rows = []
        with self._language_model_lock:
            for row in range(input_ids.shape[0]):
                runs, prompt_ids = self.prompt_runs(input_ids, attention_mask, media, row)
                rows.append(self.decode_row(runs, prompt_ids, config, stop_ids, streamer, logits_processor,
                                            stopping_criteria))
        longest = max(len(tokens) for tokens in rows)
        pad = config.pad_token_id if config.pad_token_id is not None else (stop_ids or [0])[0]
        return torch.tensor([tokens + [pad] * (longest - len(tokens)) for tokens in rows], dtype=torch.long)

    def prompt_runs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, media: list, row: int
                    ) -> tuple[list[list[int] | np.ndarray], torch.Tensor]:
        """One row's prompt without its padding, as alternating runs of token ids and of media vectors, and its
        token ids [1, n] (what the repetition penalty counts, media fillers included, as in MegrezO.generate)."""
        real = attention_mask[row].bool()
        ids = input_ids[row][real]
        padded_positions = torch.nonzero(real).flatten()
        vector_at = torch.full((input_ids.shape[1],), -1, dtype=torch.long)
        vectors, count = [], 0
        for (batch_ids, positions), values in media:
            mine = batch_ids == row
            vector_at[positions[mine]] = torch.arange(count, count + int(mine.sum()))
            vectors.append(values[mine].detach().float())
            count += int(mine.sum())
        table = torch.cat(vectors).numpy() if vectors else np.zeros((0, 0), np.float32)
        runs: list[list[int] | np.ndarray] = []
        which = vector_at[padded_positions]
        start = 0
        for end in range(1, len(ids) + 1):
            if end == len(ids) or (which[end] >= 0) != (which[start] >= 0):
                if which[start] >= 0:
                    runs.append(table[which[start:end].numpy()])
                else:
                    runs.append(ids[start:end].tolist())
                start = end
        return runs, ids[None, :]

    def decode_row(self, runs, prompt_ids: torch.Tensor, config: GenerationConfig, stop_ids: list[int], streamer,
                   logits_processor, stopping_criteria) -> list[int]:
        """Prefill the runs, then pick tokens as transformers' greedy or sampling loop does until a stop token, a
        stopping criterion or max_new_tokens."""
        llm = self.language_model
        llm.reset()
        prompt_length = prompt_ids.shape[1]
        if prompt_length + config.max_new_tokens > llm.n_ctx + 1:
            raise ValueError(f"prompt ({prompt_length} tokens) + max_new_tokens ({config.max_new_tokens}) exceed the "
                             f"model's {llm.n_ctx} positions")
        position = 0
        logits = None
        for index, run in enumerate(runs):
            logits = llm.feed(run, position, logits=index == len(runs) - 1)
            position += len(run)
        processors = logits_processors(config, logits_processor)
        sequence = prompt_ids
        if streamer is not None:
            streamer.put(prompt_ids)
        new: list[int] = []
        while True:
            scores = processors(sequence, logits[None, :].float())
            if config.do_sample:
                token = int(torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)[0, 0])
            else:
                token = int(scores.argmax(dim=-1)[0])
            new.append(token)
            sequence = torch.cat([sequence, torch.tensor([[token]])], dim=1)
            if streamer is not None:
                streamer.put(torch.tensor([token]))
            if (token in stop_ids or len(new) >= config.max_new_tokens
                    or (stopping_criteria and bool(stopping_criteria(sequence, scores).any()))):
                break
            logits = llm.step(token, position)
            position += 1
        if streamer is not None:
            streamer.end()
        return new
