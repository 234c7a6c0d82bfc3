"""Where a run's requests go: a preset, or any OpenAI-compatible base URL, and the key for it.

Keys come from ``api_key=``, then the preset's usual environment variable, then an interactive
prompt. A bare ``base_url=`` (no preset) only ever gets ``api_key=`` or ``BATCHMAGIC_API_KEY``:
another provider's key is never sent to an arbitrary URL.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

from .._errors import ConfigError
from .._secrets import Secret
from ._presets import Preset, get_preset


@dataclass(frozen=True)
class Target:
    name: str  # shown in errors and the display
    base_url: str
    api_key: Secret | None
    preset: Preset | None
    dialect: str

    def __repr__(self) -> str:
        return f"Target({self.name!r}, {self.base_url!r})"


def resolve_target(provider: str | None, base_url: str | None, api_key: str | Secret | None,
                   kind: str, *, interactive: bool | None = None, need_key: bool = True) -> Target:
    """Where the rows go, and the key for it. ``need_key=False`` (an estimate) looks for no
    key and asks for none: the target holds no key (``describe_key`` says which one a run would
    use)."""
    if provider is None and base_url is None:
        provider = os.environ.get("BATCHMAGIC_PROVIDER") or None
        base_url = os.environ.get("BATCHMAGIC_BASE_URL") or None
    if provider is None and base_url is None:
        raise ConfigError(
            "say where to send the rows: provider='openai' (or dashscope, ark, qianfan, deepseek, "
            "vllm, ollama, llamacpp), base_url='http://host/v1' for any OpenAI-compatible server, "
            "or set BATCHMAGIC_PROVIDER / BATCHMAGIC_BASE_URL"
        )
    preset = None
    if provider is not None:
        try:
            preset = get_preset(provider)
        except KeyError as exc:
            raise ConfigError(str(exc.args[0]) if exc.args else str(exc)) from None
        if kind not in preset.kinds:
            raise ConfigError(
                f"{preset.name}'s OpenAI-compatible API does not serve kind={kind!r} "
                f"(it serves {', '.join(sorted(preset.kinds))})"
            )
        if base_url is None:
            for env in preset.base_url_env:
                if os.environ.get(env):
                    base_url = os.environ[env]
                    break
        base_url = base_url or preset.base_url
    assert base_url is not None
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"base_url must be an http(s) URL like 'https://host/v1', got {base_url!r}")
    if parts.username or parts.password:
        raise ConfigError("put credentials in api_key=, not in base_url")
    name = preset.name if preset is not None else parts.hostname
    key = _find_key(api_key, preset, name, interactive) if need_key else None
    return Target(name, base_url.rstrip("/"), key, preset, preset.dialect if preset else "openai")


def _find_key(api_key, preset: Preset | None, name: str, interactive: bool | None) -> Secret | None:
    if isinstance(api_key, Secret):
        return api_key
    if api_key is not None:
        return Secret(api_key, "api_key")  # a ConfigError that never shows the value
    envs = preset.key_env if preset is not None else ("BATCHMAGIC_API_KEY",)
    for env in envs:
        value = os.environ.get(env, "").strip()
        if value:
            return Secret(value, env)
    if preset is not None and not preset.needs_key:
        return None
    if preset is None:
        return None  # a bare base URL may well be an open local server
    if interactive is None:
        interactive = _interactive()
    value = _prompt_for_key(name) if interactive else ""
    if value:
        return Secret(value, f"the API key for {name}")
    raise ConfigError(
        f"no API key for {name}: set {' or '.join(envs)} or pass api_key= "
        "(the key is never printed, logged or stored)"
    )


def describe_key(api_key: str | Secret | None, target: Target) -> str:
    """Which key a run would use, by where it comes from, never by its value."""
    if api_key is not None:
        return "api_key= (given)"
    preset = target.preset
    envs = preset.key_env if preset is not None else ("BATCHMAGIC_API_KEY",)
    for env in envs:
        if os.environ.get(env, "").strip():
            return f"${env} (set)"
    if preset is None or not preset.needs_key:
        return f"none (${envs[0]} is not set; {target.name} may need none)"
    return (f"none found: a run would ask for it where a person can answer, else stop: set "
            f"{' or '.join('$' + e for e in envs)} or pass api_key=")


def _prompt_for_key(name: str) -> str:
    """The key typed at a prompt; "" when the front end turns the prompt down after all."""
    import getpass

    try:
        return getpass.getpass(f"API key for {name} (not echoed, not stored): ").strip()
    except (EOFError, OSError, NotImplementedError):  # IPython's StdinNotImplementedError included
        return ""


def _interactive() -> bool:
    """Whether a person can answer a prompt: a kernel whose front end accepts input requests
    (papermill, nbclient and ``nbconvert --execute`` do not), or a terminal on stdin."""
    kernel = _kernel()
    if kernel is not None:
        return bool(getattr(kernel, "_allow_stdin", True))  # if unknown, the prompt will tell
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):  # a closed or detached stdin
        return False


def _kernel():
    """The running ipykernel, or None outside one."""
    if "ipykernel" not in sys.modules:
        return None
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return getattr(get_ipython(), "kernel", None)
