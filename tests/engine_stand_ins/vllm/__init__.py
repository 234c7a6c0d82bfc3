"""A recording stand-in for the few vLLM names batchmagic's worker uses. NOT vLLM (see
../README.md): ``AsyncLLMEngine`` echoes prompts, ``SamplingParams`` records its arguments."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

from standin_common import CharTokenizer, RecordingSamplingParams, answer, behave, metrics, record

__version__ = "0.0-stand-in"


class SamplingParams(RecordingSamplingParams):
    engine = "vllm"


class AsyncEngineArgs:
    def __init__(self, model: str, **kwargs):
        record("vllm.AsyncEngineArgs", {"model": model, **kwargs})
        self.model = model
        self.kwargs = kwargs


class AsyncLLMEngine:
    @classmethod
    def from_engine_args(cls, args: AsyncEngineArgs) -> AsyncLLMEngine:
        # real engines chatter on stdout, from Python and from C: the protocol must survive it
        os.write(1, b"stand-in: loading, written straight to file descriptor 1\n")
        print("stand-in: loaded")
        engine = cls()
        engine.model_config = SimpleNamespace(max_model_len=args.kwargs.get("max_model_len", 400))
        return engine

    async def get_tokenizer(self) -> CharTokenizer:
        return CharTokenizer()

    async def generate(self, prompt, sampling_params, request_id):
        ids = prompt["prompt_token_ids"]
        text_in = "".join(map(chr, ids))
        await asyncio.to_thread(behave, text_in)
        await asyncio.sleep(0.01)
        choices = []
        for sample in range(getattr(sampling_params, "n", 1)):
            text, token_ids = answer(text_in, sampling_params.max_tokens, sample)
            choices.append(SimpleNamespace(
                text=text, token_ids=token_ids,
                finish_reason="length" if len(token_ids) >= sampling_params.max_tokens else "stop"))
        yield SimpleNamespace(outputs=choices, prompt_token_ids=ids, metrics=metrics(),
                              finished=True)

    def shutdown(self) -> None:
        record("vllm.shutdown", {})
