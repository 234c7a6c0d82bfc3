"""Planning: checked options and inputs -> where the rows go, the requests, their price.

Pure: it reads the inputs and the environment, writes no file, sends nothing and prompts for no
key unless the caller needs one (a run does; ``bm.estimate`` does not, and reports which key the
run would use). Everything that can be wrong before spending is found here, in the caller's
thread. ``build_units`` turns the requests still to answer into what the executor sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _kinds
from ._backend import Unit
from ._breaker import Breaker, breaker_for
from ._cost import Price, resolve_price
from ._errors import ConfigError
from ._frame import check_clash
from ._inputs import Plan, make_plan
from ._requests import packed_around
from ._tokens import estimate_text_tokens
from ._units import embedding_units, item_units, table_embedding_units, table_units
from .providers._target import Target, describe_key, resolve_target

#: servers known to accept ``encoding_format="base64"`` for embeddings
_BASE64_EMBEDDINGS = {"openai", "simulator", "vllm"}
#: most requests in flight for a bare base_url (no preset to say better)
_DEFAULT_MAX_WINDOW = 64


@dataclass
class RunPlan:
    """A run, planned: everything but the journal and the sending."""

    options: Any  # _options.Options; its api_key is cleared once the target holds the key
    target: Target
    engine: Any  # engines.EngineSpec for engine= runs, else None
    send_url: str | None  # batch-chat: where requests go, when not target.base_url
    plan: Plan
    price: Price | None
    breaker: Breaker | None
    executor: str  # the name in executors.EXECUTORS
    max_window: int
    key_note: str  # which key a run would use (a variable's name, never a value)


def plan_run(inputs: Any, prompt: str | None, o: Any, *, need_key: bool = True) -> RunPlan:
    """Plan a run of ``inputs`` with checked options ``o`` (``_options.options_from``)."""
    target, engine, send_url = _where(o, need_key)
    key_note = describe_key(o.api_key, target) if engine is None else "none needed (engine)"
    o.api_key = None  # the Secret in the target is the only copy kept
    _check_stream(o, engine)
    params, system = o.params, o.system
    if o.schema is not None:
        params, system = _structured(o, target, engine)
    blocks = None
    if o.executor == "ray":  # files and Datasets too; with output_path= only a sample here
        from .executors._ray_inputs import ray_inputs

        inputs, blocks = ray_inputs(inputs, o)
    plan_args = dict(
        kind=o.kind, endpoint=target.base_url + _kinds.path_for(o.kind), model=o.model,
        params=params, system=system, on_missing=o.on_missing, images=o.images,
        allow_private_urls=o.allow_private_urls, samples=_samples(o), dedupe=o.dedupe)
    plan = make_plan(inputs, prompt, **plan_args)
    check_clash(plan.frame, o.schema.fields if o.schema is not None else ())
    extra = 0
    if o.schema is not None and _structured_mode(target, engine) == "json_schema":
        extra = estimate_text_tokens(o.schema.key_text)  # providers count the schema as input
        plan.add_prompt_tokens(extra)
    if engine is not None:
        from .engines import check_bodies

        check_bodies(engine, plan.items)
    elif _without_model(plan):
        raise ConfigError(f"model is required: which {target.name} model should answer?",
                          option="model")
    if blocks is not None:
        from .executors._ray_inputs import defer

        plan = defer(plan, blocks, prompt, plan_args, extra)
    price = resolve_price(o.model, target.name, o.prices)
    if o.budget is not None and price is None:
        raise ConfigError(
            f"budget= needs the price of {o.model!r} at {target.name}, which is not known: "
            "pass prices={'input': USD per 1M tokens, 'output': USD per 1M tokens}",
            option="budget")
    return RunPlan(o, target, engine, send_url, plan, price,
                   breaker_for(o.breaker) if engine is None else None,
                   _executor_name(o, engine), _max_window(o, target, engine), key_note)


def _without_model(plan: Plan) -> bool:
    """Whether a request names no model (rows planned with a slot share one body)."""
    if plan.table is not None:
        return "model" not in plan.table.slot.body
    return any("model" not in item.body for item in plan.items)


def _samples(o: Any) -> int:
    if o.samples is None:
        return 1
    if o.kind == "embedding":
        raise ConfigError("samples= asks several answers per row; an embedding has one",
                          option="samples")
    return o.samples


def _check_stream(o: Any, engine: Any) -> None:
    if not o.stream:
        return
    if o.kind not in ("chat", "completion"):
        raise ConfigError(f"stream= applies to chat and completion, not {o.kind}", option="stream")
    if engine is not None or o.mode == "batch-api":
        where = "an engine on this machine" if engine is not None else "a Batch API job"
        raise ConfigError(f"stream=True: {where} answers whole; drop stream=", option="stream")


def _structured_mode(target: Target, engine: Any) -> str:
    """How the schema is asked for: engines and bare servers take a JSON Schema; a preset says
    what its provider takes."""
    if engine is not None or target.preset is None:
        return "json_schema"
    return target.preset.structured_output


def _structured(o: Any, target: Target, engine: Any) -> tuple[dict | None, str | None]:
    """(params, system) asking for answers of ``o.schema``: ``response_format`` with the JSON
    Schema, or JSON mode with the schema spelled out in the system message (which JSON mode
    needs anyway: the word JSON), or only the system message."""
    if o.kind not in ("chat", "completion"):
        raise ConfigError(f"schema= applies to chat and completion, not {o.kind}",
                          option="schema")
    params = dict(o.params or {})
    if "response_format" in params:
        raise ConfigError("pass schema= or params['response_format'], not both",
                          option="schema")
    mode = _structured_mode(target, engine)
    if mode != "none":
        params["response_format"] = o.schema.response_format(mode)
    system = o.system
    if mode != "json_schema":
        if o.kind != "chat":
            raise ConfigError(f"{target.name} takes no JSON Schema, so schema= needs kind='chat' "
                              "(the schema goes into the system message)", option="schema")
        system = f"{system}\n\n{o.schema.instructions()}" if system else o.schema.instructions()
    return params, system


def _where(o: Any, need_key: bool) -> tuple[Target, Any, str | None]:
    """(target, engine spec or None, batch-chat send URL or None)."""
    if o.engine is not None:
        from . import engines

        spec = engines.resolve(o.engine, o.model, o.kind, o.engine_options)
        return Target(spec.engine, spec.endpoint, None, None, "engine"), spec, None
    if o.mode in ("batch-api", "batch-chat"):
        from .batchapi._modes import target_for

        target, send_url = target_for(o, need_key=need_key)
        return target, None, send_url
    return resolve_target(o.provider, o.base_url, o.api_key, o.kind, need_key=need_key), None, None


def _executor_name(o: Any, engine: Any) -> str:
    implied = "engine" if engine is not None else "batch-api" if o.mode == "batch-api" \
        else "online"
    if o.executor is None or o.executor == implied:
        return implied
    if o.executor in ("online", "engine", "batch-api"):
        raise ConfigError(f"executor={o.executor!r} does not fit the call (engine= and mode= "
                          f"say {implied!r}); drop executor=", option="executor")
    return o.executor  # an executor of its own (e.g. a cluster) answers the planned requests


def _max_window(o: Any, target: Target, engine: Any) -> int:
    if o.concurrency:
        return o.concurrency
    if engine is not None:
        return engine.default_concurrency
    preset = target.preset
    return preset.default_max_concurrency if preset is not None else _DEFAULT_MAX_WINDOW


# -- units: what the executor sends -------------------------------------------------------------


def build_units(rp: RunPlan, todo: list[int]) -> list[Unit]:
    """The units that answer items ``todo``: one request per item, embeddings packed; each
    with its worst-case cost when the price is known (budget reservations)."""
    plan = rp.plan
    if rp.engine is not None:  # engines take the body dicts themselves
        from .engines import engine_units

        units = engine_units(plan.items, todo, samples=plan.samples)
    elif plan.kind == "embedding":
        units = _embedding_units(rp, todo)
    elif plan.samples > 1 and _takes_n(rp):
        units = _draw_units(plan, todo)
    elif plan.table is not None:
        units = table_units(plan.table, todo)
    else:
        units = item_units(plan.items, todo, _kinds.encode_body)
    if rp.price is not None:
        for u in units:
            u.worst_cost = rp.price.cost(plan.prompt_tokens(u.items), plan.max_output(u.items))
    return units


def _takes_n(rp: RunPlan) -> bool:
    """Whether K draws of one request can be one request with ``n=K``."""
    preset = rp.target.preset
    return rp.engine is None and preset is not None and preset.supports_n \
        and rp.plan.kind in ("chat", "completion") and rp.options.mode != "batch-api"


def _draw_units(plan: Any, todo: list[int]) -> list[Unit]:
    """One request with ``n`` for the draws of one row still to answer (a resumed run asks
    only for the missing ones)."""
    groups: dict[tuple, list[int]] = {}
    for i in todo:
        item = plan.items[i]
        groups.setdefault((item.base, item.draw // plan.samples), []).append(i)
    units = []
    for group in groups.values():
        first = plan.items[group[0]]
        body = dict(first.body, n=len(group)) if len(group) > 1 else first.body
        tokens = first.prompt_tokens + sum(plan.items[i].max_output for i in group)
        units.append(Unit(group, _kinds.encode_body(body), tokens))
    return units


def _embedding_units(rp: RunPlan, todo: list[int]) -> list[Unit]:
    preset = rp.target.preset
    base64_ok = preset is not None and preset.name in _BASE64_EMBEDDINGS
    max_items = preset.embedding_max_inputs if preset else 256
    max_tokens = (preset.embedding_max_tokens if preset else None) or 250_000
    table = rp.plan.table
    if table is not None:
        return table_embedding_units(table, todo, max_items=max_items, max_tokens=max_tokens,
                                     around=packed_around(table.slot, base64_ok))
    return embedding_units(
        rp.plan.items, todo, max_items=max_items, max_tokens=max_tokens,
        body_of=lambda bodies: _kinds.encode_body(_kinds.pack_embeddings(bodies, base64_ok)))
