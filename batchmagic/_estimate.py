"""``bm.estimate``: what a run would send and cost, found by planning alone. It sends nothing,
writes nothing (the journal is only read, if there is one) and needs no key."""

from __future__ import annotations

from dataclasses import dataclass

from ._journal import folder_for, peek
from ._planning import RunPlan, build_units


@dataclass
class Estimate:
    """What a run would send and cost, before sending anything.

    Token counts are tokenizer-free estimates (see ``_tokens``); costs are ranges from "every
    answer is empty" to "every answer uses all of max_tokens", ``None`` where the price is unknown.
    """

    rows: int
    requests: int  # unique requests after de-duplication
    cached_rows: int  # rows the journal already answers (free)
    to_send: int  # requests still to send
    http_requests: int  # calls on the wire (embeddings are packed)
    input_errors: int  # rows that fail pre-flight
    skipped: int
    input_tokens: int  # estimated, of the requests to send
    max_output_tokens: int  # worst case, of the requests to send
    endpoint: str
    model: str | None
    first_request: dict | None
    price: str | None = None  # where the price came from
    cost_online: tuple[float, float] | None = None  # USD (low, high)
    cost_batch_api: tuple[float, float] | None = None  # USD, where a Batch API discount is known
    eta_s: float | None = None  # lower bound from the given limits
    api_key: str = ""  # which key a run would use: where it comes from, never its value

    def __str__(self) -> str:
        lines = [
            f"{self.rows} rows -> {self.requests} unique requests to {self.endpoint} ({self.model})",
            f"journal: {self.cached_rows} rows already answered; {self.to_send} requests to send "
            f"({self.http_requests} HTTP calls)",
            f"tokens: input ~{self.input_tokens:,}, output at most {self.max_output_tokens:,}",
        ]
        if self.cost_online is None:
            lines.append("cost: unknown (no price for this model: pass prices=)")
        else:
            lines.append(f"cost online: ${self.cost_online[0]:,.4f} - ${self.cost_online[1]:,.4f} "
                         f"({self.price})")
            if self.cost_batch_api is not None:
                lines.append(f"cost via Batch API: ${self.cost_batch_api[0]:,.4f} - "
                             f"${self.cost_batch_api[1]:,.4f}")
            lines.append("cost on a local engine: $0 in API fees")
        if self.input_errors or self.skipped:
            lines.append(f"{self.input_errors} rows fail pre-flight, {self.skipped} skipped")
        if self.eta_s is not None:
            lines.append(f"time: at least {self.eta_s:,.0f} s at the given limits")
        if self.api_key:
            lines.append(f"API key: {self.api_key}")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(str(self))


def estimate_plan(rp: RunPlan) -> Estimate:
    """The estimate of a planned run."""
    o, plan = rp.options, rp.plan
    if getattr(plan, "blocks", None) is not None:
        from ._errors import ConfigError

        raise ConfigError("bm.estimate cannot count an output_path= run: its rows are read and "
                          "planned per block on the Ray workers. Estimate without output_path= "
                          "(on the data, or a sample of it)", option="output_path")
    try:
        folder = folder_for(o.cache)
    except TypeError:
        folder = None  # the run would say what is wrong with cache=
    keys = [plan.key(i) for i in range(plan.n_items)]  # (a table plan builds no Item per row)
    answered = peek(folder, keys)
    todo = [i for i, key in enumerate(keys) if key not in answered]
    item_rows = plan.item_rows()
    cached_rows = int(sum(item_rows[i] for i, key in enumerate(keys) if key in answered))
    units = build_units(rp, todo)
    sent = [i for u in units for i in u.items]
    in_tok = plan.prompt_tokens(sent) if sent else 0
    out_tok = plan.max_output(sent) if sent else 0
    eta = len(units) / (o.rpm / 60) if o.rpm else None
    if o.tpm:
        eta = max(eta or 0, (in_tok + out_tok) / (o.tpm / 60))
    price = rp.price
    online = batch_api = None
    if price is not None:
        online = (price.cost(in_tok, 0), price.cost(in_tok, out_tok))
        if price.batch_share is not None:
            batch_api = (online[0] * price.batch_share, online[1] * price.batch_share)
    return Estimate(
        rows=plan.n_rows, requests=plan.n_items, cached_rows=cached_rows,
        to_send=len(sent), http_requests=len(units),
        input_errors=len(plan.row_errors), skipped=len(plan.skipped),
        input_tokens=in_tok, max_output_tokens=out_tok,
        endpoint=plan.endpoint, model=o.model,
        first_request=plan.first_body(),
        price=f"{price.source}: ${price.input:g} in / ${price.output:g} out per 1M tokens"
        if price else None,
        cost_online=online, cost_batch_api=batch_api, eta_s=eta, api_key=rp.key_note,
    )
