"""Secrets kept out of what others read: the run's config.yaml (on a volume the
engine container mounts too) and config errors.

A secret is the password in a URL (``redis://:pw@host:6379/0``) or an
``api_key``. In the config.yaml a run writes, a secret the config gave as a
``${VAR}`` reference stays that reference (whoever reads the file supplies it
again from their environment); one written out literally is masked
(``redis://:***@host:6379/0``) and read back from ``SPARRING_<FIELD PATH>``
(``SPARRING_BUS_REDIS_URL``), which the runner sets for the trainer it starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, SecretStr

MASK = "***"
SECRET_KEYS = frozenset({"api_key"})
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:'\"]*:)(?P<pw>[^\s@/'\"]+)@")
_ENV_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}")
# field names whose values a config error never repeats, even misspelt
_SECRET_NAME = re.compile(r"(key|pass(word|wd)?|secret|token)$", re.I)


class MissingSecret(ValueError):
    """A masked secret whose ``SPARRING_...`` variable is not set."""


def mask_text(text: str) -> str:
    """Every URL password in ``text`` masked, except one made only of ``${VAR}``
    references (nothing secret is written there)."""

    def one(m: re.Match[str]) -> str:
        return m.group(0) if _only_refs(m["pw"]) else f"{m['head']}{MASK}@"

    return _URL_PASSWORD.sub(one, text)


def secret_name(name: str) -> bool:
    """A field whose value must not be repeated (an error names the field only)."""
    return bool(_SECRET_NAME.search(name))


def env_name(path: str) -> str:
    """``bus.redis_url`` -> ``SPARRING_BUS_REDIS_URL``: where a masked secret is read."""
    return "SPARRING_" + re.sub(r"[^A-Za-z0-9]+", "_", path).upper()


def references(node: Any) -> dict[str, str]:
    """Dotted path -> raw text of every string in a loaded YAML file that holds a
    ``${VAR}`` reference (before it is expanded)."""
    found: dict[str, str] = {}

    def keep(key: str, path: str, value: Any) -> Any:
        if isinstance(value, str) and "${" in value:
            found[path] = value
        return value

    _walk(node, "", "", keep)
    return found


def for_disk(cfg: BaseModel, refs: dict[str, str] | None = None) -> dict[str, Any]:
    """``cfg`` as JSON data to write, each secret given back as the ``${VAR}``
    reference the config wrote it as (``refs``: :func:`references` of its file,
    by default those load_config kept), else masked."""
    refs = refs if refs is not None else getattr(cfg, "_env_refs", {})

    def hide(key: str, path: str, value: Any) -> Any:
        return _on_disk(key, value, refs.get(path)) if _secret(key, value) else value

    out: dict[str, Any] = _walk(cfg.model_dump(mode="json"), "", "", hide)
    return out


def secret_env(cfg: BaseModel, refs: dict[str, str] | None = None) -> dict[str, str]:
    """``SPARRING_<PATH>`` -> value of each secret :func:`for_disk` masks: what a
    process that reads the written config back needs in its environment."""
    refs = refs if refs is not None else getattr(cfg, "_env_refs", {})
    env: dict[str, str] = {}

    def note(key: str, path: str, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if _secret(key, value) and _masked(key, _on_disk(key, value, refs.get(path))):
            env[env_name(path)] = value
        return value

    _walk(cfg.model_dump(), "", "", note)
    return env


def restore(node: Any, where: str = "") -> Any:
    """Loaded (and env-expanded) YAML data with each masked secret read back from
    its ``SPARRING_<PATH>`` variable; :class:`MissingSecret` where that is unset."""

    def back(key: str, path: str, value: Any) -> Any:
        if not _masked(key, value):
            return value
        name = env_name(path)
        if name in os.environ:
            return os.environ[name]
        raise MissingSecret(
            f"{path}: the secret is masked in this file (the config it was written from "
            f"held it literally); set {name} to the full value, or give it as ${{VAR}} "
            "in the config you run with"
        )

    return _walk(node, where, "", back)


def _on_disk(key: str, value: str, ref: str | None) -> str:
    """What the written config holds for secret ``value`` (``ref``: as the file wrote it)."""
    if key in SECRET_KEYS:
        return ref if ref is not None and _only_refs(ref) else MASK
    return mask_text(ref if ref is not None else value)


def _only_refs(text: str) -> bool:
    return bool(text) and not _ENV_REF.sub("", text)


def _secret(key: str, value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    return key in SECRET_KEYS or mask_text(value) != value


def _masked(key: str, value: Any) -> bool:
    if not isinstance(value, str):
        return False
    return value == MASK if key in SECRET_KEYS else f":{MASK}@" in value


def _walk(node: Any, path: str, key: str, fn: Callable[[str, str, Any], Any]) -> Any:
    """``node`` rebuilt with ``fn(key, dotted path, value)`` applied to every leaf
    (a list item's key is its list's)."""
    if isinstance(node, dict):
        return {k: _walk(v, f"{path}.{k}" if path else str(k), str(k), fn) for k, v in node.items()}
    if isinstance(node, list):
        return [_walk(v, f"{path}.{i}", key, fn) for i, v in enumerate(node)]
    return fn(key, path, node)
