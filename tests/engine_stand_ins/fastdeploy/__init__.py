"""A recording stand-in for the few FastDeploy names batchmagic's worker uses. NOT FastDeploy
(see ../README.md): ``LLM`` echoes prompts, ``SamplingParams`` records its arguments."""

from __future__ import annotations

from types import SimpleNamespace

from standin_common import CharTokenizer, RecordingSamplingParams, answer, behave, metrics, record

__version__ = "0.0-stand-in"


class SamplingParams(RecordingSamplingParams):
    engine = "fastdeploy"


class LLM:
    def __init__(self, model: str, **kwargs):
        record("fastdeploy.LLM", {"model": model, **kwargs})
        tok = CharTokenizer()
        self.llm_engine = SimpleNamespace(
            cfg=SimpleNamespace(max_model_len=kwargs.get("max_model_len", 400)),
            data_processor=SimpleNamespace(tokenizer=tok))
        self._tok = tok

    def _out(self, prompt: str, params) -> SimpleNamespace:
        behave(prompt)
        text, ids = answer(prompt, params.max_tokens)
        reasoning = None
        if "</think>" in text:  # FastDeploy's reasoning parser hands the reasoning separately
            reasoning, text = text.split("</think>", 1)
        return SimpleNamespace(
            prompt_token_ids=self._tok.encode(prompt), error_code=200, error_msg=None,
            outputs=SimpleNamespace(text=text, token_ids=ids, reasoning_content=reasoning),
            metrics=metrics())

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        return [self._out(p, sampling_params) for p in prompts]

    def chat(self, messages, sampling_params=None, use_tqdm=True, chat_template_kwargs=None):
        outs = []
        for conv in messages:
            prompt = self._tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True,
                                                   **(chat_template_kwargs or {}))
            outs.append(self._out(prompt, sampling_params))
        return outs
