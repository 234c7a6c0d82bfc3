"""``%%batch`` and its line magics: a thin shell over ``bm.batch`` / ``bm.submit`` / ``bm.estimate``.

Modelled on IPython's own ``%%script``: every option is a traitlet (``%config BatchMagics.<name>``),
flags come from ``@magic_arguments``, misuse raises ``UsageError`` (no traceback), the run itself
happens on batchmagic's private loop thread. Defaults, highest precedence first:

1. a flag in the cell;
2. ``%config BatchMagics.<option> = value`` (or ``c.BatchMagics.<option>`` in an IPython config);
3. ``[tool.batchmagic]`` in the nearest ``pyproject.toml`` above the kernel's working directory;
4. ``BATCHMAGIC_<OPTION>`` environment variables;
5. the library's own defaults.

Where the rows go (``provider``, ``base_url``, ``engine``) is taken as a group from the highest
layer that says anything about it, so a ``--base-url`` in the cell is never combined with a
provider from the config (that would send the provider's key to another server).
"""

from __future__ import annotations

import difflib
import keyword
import os
import shlex
import time
from pathlib import Path
from typing import Any

import pandas as pd
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Enum, Float, Int, Unicode

from . import _api
from ._display import TextDisplay, summary_line
from ._errors import ConfigError
from ._inputs import is_foreign_table
from ._options import KINDS, OPTIONS, PARAM_FLAGS, Option, as_flag_message

#: what only the magic takes (where the rows come from and go, and how the cell runs)
MAGIC_ONLY: tuple[Option, ...] = (
    Option("on", "str | None", None, "Name of the DataFrame, Series or list in the notebook whose "
           "rows are sent (default: the cell's text is one prompt).", "magic", flags=("--on",),
           metavar="VAR", text=str, config=True),
    Option("output", "str | None", None, "Name of the variable the result frame is assigned to "
           "(default: the cell's output value). With --bg, bound at once to a frame that fills "
           "in.", "magic", flags=("-o", "--output"), metavar="VAR", text=str, config=True),
    Option("dry_run", "bool", False, "Show the plan (rows, requests, first prompt, endpoint, "
           "key); send nothing.", "magic", flags=("--dry-run",), text=bool, config=True),
    Option("bg", "bool", False, "Run in the background: the cell returns at once, the panel's "
           "buttons work.", "magic", flags=("--bg",), text=bool, config=True),
)
#: the magic's options: the run's (those that can be written in a cell), its flags for params,
#: and its own. The order is the order ``%config BatchMagics`` lists them in.
MAGIC_OPTIONS: dict[str, Option] = {
    o.name: o for o in (*MAGIC_ONLY[:2], *(o for o in OPTIONS if o.text is not None),
                        *PARAM_FLAGS, *MAGIC_ONLY[2:])}
#: options settable as defaults (%config, [tool.batchmagic], BATCHMAGIC_*)
CONFIGURABLE: dict[str, Option] = {n: o for n, o in MAGIC_OPTIONS.items() if o.config}
#: options naming where rows go: taken together from one layer (see the module docstring)
WHERE = ("provider", "base_url", "engine")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _trait(opt: Option):
    """The traitlet behind one option: None means "not set here" (the next layer decides)."""
    if opt.choices:
        return Enum(opt.choices, default_value=None, allow_none=True,
                    help=opt.doc).tag(config=True)
    cls = {str: Unicode, int: Int, float: Float, bool: Bool}[opt.text]
    return cls(default_value=None, allow_none=True, help=opt.doc).tag(config=True)


def _coerce(name: str, value: Any, source: str) -> Any:
    """Check (and for env strings, parse) one default; a wrong type is a UsageError naming where
    the value came from."""
    opt = CONFIGURABLE[name]
    kind = opt.text
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        try:
            if kind is bool:
                if text not in _TRUE | _FALSE:
                    raise ValueError(text)
                return text in _TRUE
            return kind(text)
        except ValueError:
            raise UsageError(f"{source}: {name} must be {_type_name(kind)}, got {value!r}") from None
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise UsageError(f"{source}: {name} must be {_type_name(kind)}, got {value!r}")
    if opt.choices and value not in opt.choices:
        raise UsageError(f"{source}: {name} must be one of {', '.join(opt.choices)}, got "
                         f"{value!r}")
    return value


def _type_name(kind: type) -> str:
    return {str: "a string", int: "a whole number", float: "a number",
            bool: "true or false"}[kind]


def _flags_of(opt: Option) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The argparse flags and settings of one option in a cell."""
    settings: dict[str, Any] = {"help": opt.doc}
    if opt.text is bool:  # a flag says the opposite of the default
        settings.update(action="store_const", const=not opt.default, dest=opt.name)
    else:
        settings["dest"] = opt.name
        if opt.choices:
            settings["choices"] = opt.choices
        else:
            settings["metavar"] = opt.metavar or opt.name.upper()
        if opt.text in (int, float):
            settings["type"] = opt.text
    return opt.flags, settings


def _cell_flags(fn):
    """``@magic_arguments`` for %%batch, generated from the option table: the kind as the first
    word, then every option with a flag."""
    for opt in reversed([o for o in MAGIC_OPTIONS.values() if o.flags and o.name != "kind"]):
        flags, settings = _flags_of(opt)
        fn = argument(*flags, **settings)(fn)
    fn = argument("kind", nargs="?", choices=KINDS, help="chat (default), completion, "
                  "embedding or image")(fn)
    return magic_arguments()(fn)


_pyproject_cache: dict[Path, tuple[int, dict]] = {}


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml at or above ``start`` (default: the working directory)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def pyproject_defaults(start: Path | None = None) -> dict[str, Any]:
    """``[tool.batchmagic]`` of the nearest pyproject.toml, checked; {} when there is none."""
    path = find_pyproject(start)
    if path is None:
        return {}
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            return {}
    mtime = path.stat().st_mtime_ns
    cached = _pyproject_cache.get(path)
    if cached is not None and cached[0] == mtime:
        return dict(cached[1])
    try:
        with path.open("rb") as f:
            table = tomllib.load(f).get("tool", {}).get("batchmagic", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    values = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in CONFIGURABLE:
            close = difflib.get_close_matches(name, CONFIGURABLE, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"{path} [tool.batchmagic]: unknown option {key!r}{hint}; "
                             f"the options are: {', '.join(CONFIGURABLE)}")
        values[name] = _coerce(name, value, f"{path} [tool.batchmagic]")
    _pyproject_cache[path] = (mtime, values)
    return dict(values)


def env_defaults(environ: dict | None = None) -> dict[str, Any]:
    """``BATCHMAGIC_<OPTION>`` environment variables, parsed."""
    environ = os.environ if environ is None else environ
    values = {}
    for name, opt in CONFIGURABLE.items():
        var = f"BATCHMAGIC_{name.upper()}"
        if var in environ and (environ[var] != "" or opt.text is bool):
            values[name] = _coerce(name, environ[var], var)
    return values


def merge(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """Highest-precedence layer first; the WHERE options come together from one layer."""
    merged: dict[str, Any] = {}
    for layer in reversed(layers):
        merged.update({k: v for k, v in layer.items() if k not in WHERE})
    for layer in layers:
        if any(layer.get(k) is not None for k in WHERE):
            merged.update({k: layer.get(k) for k in WHERE})
            break
    return merged


@magics_class
class BatchMagics(Magics):
    """``%%batch``: run an LLM over every row of a DataFrame from a cell. Options are traitlets,
    so ``%config BatchMagics.model = "qwen-plus"`` sets a default for every cell."""

    # one trait per configurable option, from the table (a class body's namespace is a dict)
    locals().update({name: _trait(opt) for name, opt in CONFIGURABLE.items()})

    def __init__(self, shell=None, **kwargs):
        super().__init__(shell=shell, **kwargs)
        self._tasks: dict[str, Any] = {}  # run id -> BatchTask of --bg runs not yet waited for
        self._background: set[str] = set()  # the ids of every --bg run, for %batch_runs
        if shell is not None:
            from ._complete import register

            register(shell, self)  # flags, providers, models, variables, {column} names

    # -- %%batch --------------------------------------------------------------------------------

    @_cell_flags
    @line_cell_magic
    def batch(self, line: str, cell: str | None = None):
        """Run an LLM over every row: the cell body is the prompt template.

        ::

            %%batch chat --on reviews -o labeled -m qwen-plus -p dashscope --rpm 600
            Classify the sentiment of this review as positive, negative or mixed: {text}

        ``{column}`` fields are filled from each row of the DataFrame named by ``--on`` (a Series
        or list of texts fills the template's one field, or is the prompt itself when the cell is
        empty). Without ``--on`` the cell's text is one prompt. The result has the input rows in
        order plus ``output``, ``error``, ``finish_reason``, token, cost, latency and attempt
        columns; it is assigned to ``-o VAR``, or is the cell's output value.

        A panel under the cell shows progress, throughput, spend and errors. ``--bg`` returns at
        once and binds ``-o VAR`` to a frame of the final shape that fills in while the run goes
        on; the panel's Pause / Resume / Cancel buttons control it. Interrupting the kernel stops a
        foreground run, keeps the finished rows and prints what was done, cancelled and not
        started. ``--dry-run`` shows the plan and sends nothing.

        Defaults come from ``%config BatchMagics.<option>``, then ``[tool.batchmagic]`` in the
        nearest pyproject.toml, then ``BATCHMAGIC_<OPTION>`` environment variables; a flag wins
        over all. API keys come from the provider's environment variable (or a prompt), never from
        the cell. Line magics: ``%batch_runs``, ``%batch_wait``, ``%batch_pause``,
        ``%batch_resume``, ``%batch_cancel``.
        """
        args = _parse(self.batch, line)
        opts = self.resolve(vars(args))
        body = (cell or "").strip()
        inputs, prompt = self._inputs(opts.get("on"), body)
        kwargs = self._call_kwargs(opts)
        if "schema" in kwargs:
            kwargs["schema"] = self._schema(kwargs["schema"])
        out = opts.get("output")
        if out is not None and (not out.isidentifier() or keyword.iskeyword(out)):
            raise UsageError(f"-o needs a variable name, got {out!r}")
        if opts.get("dry_run"):
            return self._dry_run(inputs, prompt, kwargs)
        if opts.get("bg"):
            task = self._call(_api.submit, inputs, prompt, kwargs)
            self._forget_finished(keep=_KEEP_FINISHED)
            self._tasks[task.run_id] = task
            self._background.add(task.run_id)
            if out is None:
                return task
            self.shell.user_ns[out] = task.frame
            return None
        df = self._call(_api.batch, inputs, prompt, kwargs)
        if out is not None:
            self.shell.user_ns[out] = df
        self._report_stop(df, out)
        return None if out is not None else df

    def resolve(self, flags: dict[str, Any]) -> dict[str, Any]:
        """Every option's value: flag, then %config, then pyproject.toml, then environment."""
        given = {k: v for k, v in flags.items() if v is not None}
        configured = {name: getattr(self, name) for name in CONFIGURABLE
                      if getattr(self, name) is not None}
        return merge([given, configured, pyproject_defaults(), env_defaults()])

    def _inputs(self, name: str | None, body: str) -> tuple[Any, str | None]:
        if name is None:
            if not body:
                raise UsageError("%%batch needs a prompt: write it in the cell body (a template "
                                 "over the columns of --on VAR, or one prompt on its own)")
            return body, None
        ns = self.shell.user_ns
        if name not in ns:
            hidden = self.shell.user_ns_hidden  # In, Out and the like
            frames = [k for k, v in ns.items() if not k.startswith("_") and k not in hidden
                      and _has_rows(v)]
            close = difflib.get_close_matches(name, frames, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else \
                (f"; DataFrames, Series and lists here: {', '.join(sorted(frames)[:10])}"
                 if frames else "")
            raise UsageError(f"--on {name}: no variable named {name!r} in the notebook{hint}")
        value = ns[name]
        if not _has_rows(value):
            raise UsageError(f"--on {name}: {name} is a {type(value).__name__}; pass a "
                             "DataFrame, a Series or a list")
        return value, body or None

    def _schema(self, name: str) -> Any:
        """``--schema NAME``: the pydantic model, JSON Schema dict or type the notebook calls
        NAME (a dotted name reaches into a module: ``--schema models.Review``)."""
        head, _, rest = name.partition(".")
        ns = self.shell.user_ns
        if not head.isidentifier() or head not in ns:
            raise UsageError(f"--schema {name}: no variable named {head!r} in the notebook; "
                             "define the schema first (a pydantic model, a JSON Schema dict, or "
                             "e.g. Label = Literal['yes', 'no'])")
        value = ns[head]
        for part in filter(None, rest.split(".")):
            if not hasattr(value, part):
                raise UsageError(f"--schema {name}: {head} has no {part!r}")
            value = getattr(value, part)
        return value

    @staticmethod
    def _call_kwargs(opts: dict[str, Any]) -> dict[str, Any]:
        """The keywords of the bm call: the run's options as given, the param flags in params."""
        kwargs = {o.name: opts[o.name] for o in OPTIONS if opts.get(o.name) is not None}
        params = {o.name: opts[o.name] for o in PARAM_FLAGS if opts.get(o.name) is not None}
        if params:
            kwargs["params"] = params
        return kwargs

    @staticmethod
    def _call(fn, inputs, prompt, kwargs):
        try:
            return fn(inputs, prompt, **kwargs)
        except ConfigError as exc:  # misuse, found before anything was sent: no traceback
            raise UsageError(_as_flags(exc)) from None

    def _report_stop(self, df: pd.DataFrame, out: str | None) -> None:
        """One line after a stopped foreground run (a text bar has already printed its own)."""
        facts = df.attrs.get("batchmagic", {})
        if facts.get("state") in (None, "done"):
            return
        run = _find(facts.get("run_id"))
        if run is None or isinstance(run.display, TextDisplay):
            return
        line = summary_line(run.progress.snapshot())
        where = f"; the finished rows are in {out}" if out else ""
        print(f"{line}{where}")

    def _dry_run(self, inputs, prompt, kwargs) -> None:
        kwargs = dict(kwargs)
        key_note = _key_note(kwargs.get("provider"), kwargs.get("base_url"))
        # a plan needs no key: a dry run must neither prompt for one nor read a real one
        kwargs["api_key"] = "dry-run"
        est = self._call(_api.estimate, inputs, prompt, kwargs)
        lines = ["dry run: nothing was sent"]
        lines += [f"  {t}" for t in str(est).splitlines()]
        lines.append(f"  API key: {key_note}")
        first = _prompt_text(est.first_request)
        if first is not None:
            lines.append("  first prompt:")
            lines += [f"    {t}" for t in first.splitlines() or [""]]
        print("\n".join(lines))

    # -- line magics ----------------------------------------------------------------------------

    @line_magic
    def batch_runs(self, line: str = "") -> pd.DataFrame:
        """List the runs of this kernel (newest last): id, state, where, and counts in rows as
        the panel shows them (a stop's cut-off and unsent rows apart from the failed ones)."""
        rows = [_listed(run, run.id in self._background) for run in _api.recent_runs()]
        return pd.DataFrame(rows, columns=list(RUN_COLUMNS))

    @line_magic
    def batch_cancel(self, line: str = "") -> None:
        """%batch_cancel [RUN_ID|all]: cancel a run (finished rows are kept); without an id,
        the only run going."""
        self._control("cancel", line)

    @line_magic
    def batch_pause(self, line: str = "") -> None:
        """%batch_pause [RUN_ID|all]: stop sending new requests (those in flight finish);
        without an id, the only run going."""
        self._control("pause", line)

    @line_magic
    def batch_resume(self, line: str = "") -> None:
        """%batch_resume [RUN_ID|all]: resume a paused run; without an id, the only run going."""
        self._control("resume", line)

    @magic_arguments()
    @argument("run_id", nargs="?", help="a run id or its prefix (default: every background run)")
    @argument("--timeout", type=float, help="give up after this many seconds")
    @line_magic
    def batch_wait(self, line: str = "") -> None:
        """Wait for background runs started with %%batch --bg to finish. Interrupting the wait
        leaves the runs going."""
        args = _parse(self.batch_wait, line)
        if args.run_id:
            chosen = [r.id for r in _select(args.run_id)]
            runs = [run_id for run_id in chosen if run_id in self._tasks]
            if not runs and set(chosen) & self._background:
                return  # it finished and was waited for already
            if not runs:
                raise UsageError(f"no background run {args.run_id!r} started by %%batch --bg")
        else:
            runs = list(self._tasks)
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        for run_id in runs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            task = self._tasks[run_id]
            try:
                task.wait(left)
            except TimeoutError:
                raise UsageError(f"run {run_id} is still going after {args.timeout:g} s") from None
            display = task._run.display
            if display is not None and hasattr(display, "republish"):
                display.republish(task._run.progress.snapshot())
            self._tasks.pop(run_id, None)  # waited for: its frame is the user's, not ours

    def _forget_finished(self, keep: int) -> None:
        """Let go of all but the newest ``keep`` finished --bg tasks: each holds its rows."""
        finished = [run_id for run_id, task in self._tasks.items() if task.done()]
        for run_id in finished[:max(0, len(finished) - keep)]:
            del self._tasks[run_id]

    def _control(self, action: str, line: str) -> None:
        ident = line.strip()
        running = [r for r in _api.recent_runs() if r.state in ("planned", "running")]
        if not ident and len(running) != 1:  # the only run going needs no id; else say which
            ids = ", ".join(r.id for r in running) or "none"
            raise UsageError(f"%batch_{action} RUN_ID (or 'all'); running now: {ids}")
        targets = running if ident in ("", "all") else _select(ident)
        for run in targets:
            run.control(action)
        print(f"{action}: {', '.join(r.id for r in targets) or 'no running runs'}")


#: finished --bg tasks kept for %batch_wait before the oldest are let go
_KEEP_FINISHED = 4
#: what %batch_runs lists, one row per run; the counts are rows, as the panel shows them
RUN_COLUMNS = ("run_id", "state", "kind", "model", "where", "rows", "finished", "ok", "failed",
               "cached", "cancelled_in_flight", "not_started", "started", "elapsed_s",
               "background")


def _listed(run, background: bool) -> dict:
    """One run as %batch_runs lists it: its panel's state word and counts."""
    from ._widget import state_word

    snap = run.progress.snapshot()
    listed = {**run.summary(), "background": background}
    if listed["state"] not in ("planned", "running"):
        listed["state"] = state_word(snap)
    listed.update(ok=snap.ok, failed=snap.failures, cached=snap.cached,
                  cancelled_in_flight=snap.cut_off, not_started=snap.not_started)
    return listed


def _has_rows(value: Any) -> bool:
    """What --on may name: pandas, polars or pyarrow tables and columns, lists, tuples."""
    return isinstance(value, (pd.DataFrame, pd.Series, list, tuple)) or is_foreign_table(value)


def _parse(magic, line: str):
    """Flags as a shell would split them (IPython's own splitter keeps the quotes around
    ``--system "Be brief."``); argparse errors are UsageErrors, and a mistyped flag gets a
    suggestion."""
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot read the flags: {exc}") from None
    parser = magic.parser
    known = [s for action in parser._actions for s in action.option_strings]
    for word in argv:  # a mistyped flag first: its value would be taken for something else
        flag = word.split("=", 1)[0]
        if flag.startswith("--") and not any(k.startswith(flag) for k in known):
            raise UsageError(_unknown_flag(known, flag))
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise UsageError(_unknown_flag(known, unknown[0]))
    return args


def _unknown_flag(known: list[str], word: str) -> str:
    flag = word.split("=", 1)[0]
    close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
    if flag.startswith("-"):
        hint = f"; did you mean {close[0]}?" if close else f" (the flags: {', '.join(known)})"
        return f"{flag}: no such flag{hint}"
    return (f"unexpected {word!r} on the %%batch line: the prompt goes in the cell body, and a "
            "flag's value with spaces needs quotes")


def _as_flags(exc: ConfigError) -> str:
    """A ConfigError as a cell author reads it: the option named by its flag (-m/--model)."""
    return as_flag_message(exc, MAGIC_OPTIONS)


def _find(run_id: str | None):
    for run in _api.recent_runs():
        if run.id == run_id:
            return run
    return None


def _select(prefix: str) -> list:
    runs = [r for r in _api.recent_runs() if r.id.startswith(prefix)]
    if not runs:
        known = ", ".join(r.id for r in _api.recent_runs()[-10:]) or "none yet"
        raise UsageError(f"no run {prefix!r} in this kernel; recent runs: {known}")
    if len(runs) > 1:
        raise UsageError(f"{prefix!r} matches {len(runs)} runs: {', '.join(r.id for r in runs)}")
    return runs


def _key_note(provider: str | None, base_url: str | None) -> str:
    """Where a real run would find its key: names of variables only, never a value."""
    from .providers._presets import get_preset

    if provider is None:
        envs: tuple[str, ...] = ("BATCHMAGIC_API_KEY",)
        needs = False
    else:
        try:
            preset = get_preset(provider)
        except KeyError:
            return "unknown provider"
        envs, needs = tuple(preset.key_env), preset.needs_key
    found = [e for e in envs if os.environ.get(e, "").strip()]
    if found:
        return f"from {found[0]}"
    if not needs:
        return "none needed"
    return f"none found: set {' or '.join(envs)} (a real run will ask for it)"


def _prompt_text(body: dict | None) -> str | None:
    """The rendered prompt of a request body, for showing (first 600 characters)."""
    if not body:
        return None
    text: Any = None
    if "messages" in body:
        users = [m for m in body["messages"] if m.get("role") == "user"] or body["messages"]
        text = users[-1].get("content") if users else None
        if isinstance(text, list):  # vision: text parts, images named
            text = " ".join(p.get("text", "[image]") if isinstance(p, dict) else str(p)
                            for p in text)
    else:
        text = body.get("prompt", body.get("input"))
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= 600 else text[:600] + "…"
