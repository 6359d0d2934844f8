"""The vLLM backend: the project's offline engine (`vllm_demo.offline.load_llm`, the MegrezO plugin registered)
and its request builder (`vllm_demo.chat_requests`). Requests go into the engine together and are scheduled by its
continuous batching; replies are handed back as each request finishes, so predictions are written as they come.
`max_in_flight` bounds how many requests (with their decoded media) are held at once."""

import json
from collections.abc import Iterator
from pathlib import Path

from .generation import GenerationSettings


def checkpoint_dtype(model_path: str) -> str:
    """The dtype the checkpoint's config names. vLLM's own "auto" would run a float32 checkpoint in half
    precision, while transformers' "auto" keeps float32; resolving it here keeps both backends on the same
    precision."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    return config.get("dtype") or config.get("torch_dtype") or "auto"


class VLLMBackend:
    """Replies from the offline vLLM engine, requests scheduled together."""

    def __init__(self, model_path: str, settings: GenerationSettings, max_in_flight: int = 256, dtype: str = "auto",
                 **engine_args):
        from vllm.sampling_params import RequestOutputKind

        from megrezo.processing_megrezo import MegrezOProcessor
        from vllm_demo.chat_requests import authors_sampling_params
        from vllm_demo.offline import load_llm

        self.processor = MegrezOProcessor.from_pretrained(model_path, trust_remote_code=True)
        dtype = checkpoint_dtype(model_path) if dtype == "auto" else dtype
        self.llm = load_llm(model_path, dtype=dtype, seed=0, **engine_args)
        self.params = authors_sampling_params(
            self.processor,
            max_tokens=settings.max_new_tokens,
            repetition_penalty=settings.repetition_penalty,
            detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        self.max_in_flight = max_in_flight

    def generate(self, conversations: list[list[dict]]) -> Iterator[tuple[int, str | ValueError]]:
        """(index, reply) for every conversation, in the order they finish. Replies are the generated ids before
        the stop token, decoded as `model.chat` decodes them (special tokens skipped). A conversation whose request
        cannot be built gets its ValueError as its reply; the others go on."""
        from vllm.exceptions import VLLMClientError

        from vllm_demo.chat_requests import reply_tokens, to_vllm_request

        engine = self.llm.llm_engine
        tokenizer = self.processor.tokenizer
        index_of: dict[str, int] = {}
        next_index = 0
        while next_index < len(conversations) or engine.has_unfinished_requests():
            room = self.max_in_flight - engine.get_num_unfinished_requests()
            if room > 0 and next_index < len(conversations):
                chunk = range(next_index, min(next_index + room, len(conversations)))
                for index in chunk:
                    # One request per call, so that one the engine refuses (a prompt too long) fails alone.
                    try:
                        request = to_vllm_request(self.processor, conversations[index])
                        (request_id,) = self.llm.enqueue([request], self.params, use_tqdm=False)
                    except ValueError as error:
                        yield index, error
                        continue
                    except VLLMClientError as error:  # vLLM's own refusals (a prompt too long) are no ValueError
                        yield index, ValueError(str(error))
                        continue
                    # `enqueue` returns the engine's ids ("<id>-<random suffix>"); outputs carry the part before it.
                    index_of[request_id.split("-", 1)[0]] = index
                next_index = chunk.stop
            for output in engine.step():
                if output.finished:
                    tokens = reply_tokens(output.outputs[0].token_ids, self.processor)
                    yield index_of.pop(output.request_id), tokenizer.decode(tokens, skip_special_tokens=True)

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()
