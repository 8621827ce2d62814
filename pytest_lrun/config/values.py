"""The values an option, a machine table or a plan entry may hold, parsed from text and checked.

Each parser takes the text of a flag, an ini key or an ``LRUN_*`` variable (or a value
of a TOML table) and returns the value, or raises a ValueError saying what was
expected, which its caller turns into a
:class:`~pytest_lrun.core.errors.ConfigError` naming where the value came from:
seconds (:func:`parse_seconds`, :func:`check_seconds`), sizes (:func:`parse_size`),
switches, lists, commands, environment variable names, counts and the store's URL
(:func:`parse_store_url`, shown without its password by :func:`redact_url`).
"""

from __future__ import annotations

import math
import re
import shlex
import urllib.parse
from collections.abc import Callable
from decimal import Decimal

from pytest_lrun.config.shards import parse_shards

__all__ = [
    "ENV_NAMES_EXPECTED",
    "ENV_NAME_RE",
    "GIB",
    "MAX_FLAKY_ATTEMPTS",
    "MAX_INFRA_RETRIES",
    "MAX_SECONDS",
    "MAX_SIZE",
    "MIB",
    "SIZE_SPELLINGS",
    "check_seconds",
    "env_names_of",
    "parse_bool",
    "parse_choice",
    "parse_command",
    "parse_env_names",
    "parse_list",
    "parse_positive_seconds",
    "parse_retries",
    "parse_seconds",
    "parse_shard_count",
    "parse_size",
    "parse_store_url",
    "redact_url",
]

MIB = 1024 * 1024
GIB = 1024 * MIB
# Retrying an infrastructure failure more often than this hides a broken fleet.
MAX_INFRA_RETRIES = 10
MAX_FLAKY_ATTEMPTS = 10
# Waits, socket timeouts and lock timeouts overflow near 9.2e9 s: refuse long before that.
MAX_SECONDS = 1e9
# The engine stores sizes as int64.
MAX_SIZE = 2**63 - 1

#: An environment variable name a secret may have (``--lrun-secret-env``, ``secret_env``).
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: What :func:`parse_size` accepts, for help texts and error messages.
SIZE_SPELLINGS = (
    "a byte count (1048576) or a number with a unit k, m or g, optionally followed by b or ib, "
    "in any case (512k, 16m, 16MiB, 1.5g)"
)
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)(?:([kmg])(?:i?b)?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"k": 1024, "m": MIB, "g": GIB}


def check_seconds(value: float, *, zero_ok: bool) -> float:
    """``value`` as a float number of seconds; ValueError (no "got ..." part) when it is not one.

    NaN, infinities, negatives and (unless ``zero_ok``) zero are refused, and so is
    anything above :data:`MAX_SECONDS`.
    """
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        raise ValueError(
            "expected a number of seconds, 0 or more" if zero_ok else "expected a positive number of seconds"
        )
    if value > MAX_SECONDS:
        raise ValueError(f"expected at most {MAX_SECONDS:g} seconds")
    return float(value)


def parse_seconds(text: str) -> float:
    """Seconds, 0 or more, from text such as ``30`` or ``1.5``."""
    return check_seconds(_float(text), zero_ok=True)


def parse_positive_seconds(text: str) -> float:
    """Seconds above zero, from text such as ``30`` or ``1.5``."""
    return check_seconds(_float(text), zero_ok=False)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("expected a number of seconds") from None


def parse_size(text: str) -> int:
    """Bytes from a size as :data:`SIZE_SPELLINGS` says: ``1048576``, ``512k``, ``16MiB``, ``1.5g``.

    The package's one size parser. Zero, negatives, NaN, infinities, exponents and
    sizes above :data:`MAX_SIZE` are refused with a ValueError saying why.
    """
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected a size: {SIZE_SPELLINGS}")
    number, unit = match.groups()
    # Decimal, not float: a long digit string stays a finite number (float gives inf), so the
    # range check below sees it.
    value = int(Decimal(number) * _SIZE_UNITS.get((unit or "").lower(), 1))
    if value <= 0:
        raise ValueError("expected a size of at least one byte")
    if value > MAX_SIZE:
        raise ValueError(f"expected at most {MAX_SIZE} bytes")
    return value


def redact_url(url: str) -> str:
    """``url`` with its password (``user:PASSWORD@`` or ``?password=...``) shown as ``***``;
    a URL that does not even split is shown as ``***`` whole (it may hold a password anywhere)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query = "&".join(
        f"{key}=***" if key.lower() == "password" else f"{key}={value}"
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def parse_store_url(text: str) -> str:
    """A ``postgresql://`` (or ``postgres://``) URL, as libpq reads it; the file store has no URL."""
    url = text.strip()
    if not url.startswith(("postgresql://", "postgres://")):
        raise ValueError("expected a postgresql:// URL (leave it unset for the file store in the state dir)")
    try:
        urllib.parse.urlsplit(url).port  # noqa: B018 - what raises for a bad host or port
    except ValueError as e:
        raise ValueError(f"not a valid URL: {e}") from None
    return url


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true/false, yes/no, on/off or 1/0")


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.replace("\n", ",").split(",") if part.strip())


def parse_retries(text: str) -> int:
    """A count of retries, 0 to :data:`MAX_INFRA_RETRIES`."""
    try:
        count = int(text)
    except ValueError:
        count = -1
    if not 0 <= count <= MAX_INFRA_RETRIES:
        raise ValueError(f"expected a whole number from 0 to {MAX_INFRA_RETRIES}")
    return count


def parse_attempts(text: str) -> int:
    """A count of attempts in all, 1 to :data:`MAX_FLAKY_ATTEMPTS`."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_FLAKY_ATTEMPTS:
        raise ValueError(f"expected a whole number from 1 to {MAX_FLAKY_ATTEMPTS}")
    return count


def parse_env_names(text: str) -> tuple[str, ...]:
    """Environment variable names, comma separated."""
    names = parse_list(text)
    for name in names:
        if not ENV_NAME_RE.fullmatch(name):
            raise ValueError(f"{name!r} is not an environment variable name (letters, digits and _)")
    return names


def env_names_of(value: object) -> tuple[str, ...] | None:
    """``value`` (a TOML list) as environment variable names, or None when it is not such a list."""
    if isinstance(value, list) and all(isinstance(n, str) and ENV_NAME_RE.fullmatch(n) for n in value):
        return tuple(value)
    return None


#: What a list of environment variable names looks like, for error messages.
ENV_NAMES_EXPECTED = 'expected a list of environment variable names such as ["TOKEN"]'


def parse_command(text: str) -> tuple[str, ...]:
    words = tuple(shlex.split(text))
    if not words:
        raise ValueError("the command is empty")
    return words


def parse_choice(*choices: str) -> Callable[[str], str]:
    """A parser of one of ``choices``, spelled exactly."""

    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return parse


def parse_shard_count(text: str) -> int:
    """A shard count; 0 stands for ``auto``."""
    count = parse_shards(text)
    return 0 if count is None else count
