"""JSON text exactly as JavaScript's ``JSON.stringify`` writes it.

Legacy dashboards receive Socket.IO payloads that the Node.js server built
with ``JSON.stringify``; some compare or display them as text, so ours must
match byte for byte: compact separators, non-ASCII left as is, numbers in
JavaScript's format (``45`` not ``45.0``, ``1e-7`` not ``1e-07``), integer-like
object keys first (JavaScript orders them so), and dates as ``toJSON`` gives.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime

__all__ = ["dumps", "number"]

# What JSON.stringify escapes: quote, backslash, C0 controls, and (since
# ES2019) lone surrogates. DEL, U+2028 and U+2029 are written raw.
_ESCAPE = re.compile('[\x00-\x1f"\\\\\ud800-\udfff]')
_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_HAS_SURROGATE = re.compile("[\ud800-\udfff]")
# An integer-like key that JavaScript treats as an array index: 0 .. 2**32 - 2,
# written canonically (no sign, no leading zero).
_INDEX_KEY = re.compile(r"0|[1-9][0-9]{0,9}")
_MAX_INDEX = 2**32 - 2
# Integers beyond this are not exact in a JavaScript number.
_SAFE_INT = 2**53
# What an array-index key starts with ("" too: ``in`` finds it in any string,
# which sends an empty key down the general path, harmlessly).
_DIGITS = "0123456789"


def dumps(value: object) -> str:
    """``value`` as ``JSON.stringify(value)`` would write it (``TypeError`` if unsupported)."""
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts)


def number(value: float) -> str:
    """A finite float in JavaScript's ``Number.prototype.toString`` format."""
    plain = _plain_number(value)  # also 0 and -0: JSON.stringify(-0) is "0"
    if plain is not None:
        return plain
    text = repr(abs(value))
    mantissa, _, exp_text = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    # n: where the decimal point sits relative to the first significant digit.
    point = len(whole) + (int(exp_text) if exp_text else 0)
    point -= len(whole + fraction) - len(digits)
    digits = digits.rstrip("0")
    k = len(digits)
    sign = "-" if value < 0 else ""
    if k <= point <= 21:
        return sign + digits + "0" * (point - k)
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * -point + digits
    exponent = point - 1
    exp = ("+" if exponent >= 0 else "-") + str(abs(exponent))
    if k == 1:
        return sign + digits + "e" + exp
    return sign + digits[0] + "." + digits[1:] + "e" + exp


def _plain_number(value: float) -> str | None:
    """The common cases (every coordinate and speed), or None.

    Both languages write the shortest digits that read back as the same
    double, so they differ only where Python writes an exponent or a ".0"
    (JavaScript switches to an exponent only past 1e21 and below 1e-6).
    Below 2**53 an integral double's shortest digits are its exact digits.
    """
    if value.is_integer():
        return str(int(value)) if -_SAFE_INT < value < _SAFE_INT else None
    text = repr(value)
    return None if "e" in text else text


def _string(value: str) -> str:
    if not _ESCAPE.search(value):
        return '"' + value + '"'
    if _HAS_SURROGATE.search(value):
        # A high+low pair held as two code points is one character to JavaScript.
        value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return '"' + _ESCAPE.sub(_escape_one, value) + '"'


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT.get(char) or f"\\u{ord(char):04x}"


def _int(value: int) -> str:
    if -_SAFE_INT < value < _SAFE_INT:
        return str(value)
    try:
        as_float = float(value)  # what JSON.parse would have made of it
    except OverflowError:
        return "null"  # Infinity
    return number(as_float)


def _datetime(value: datetime) -> str:
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return '"' + value.strftime("%Y-%m-%dT%H:%M:%S.") + f'{value.microsecond // 1000:03d}Z"'


def _ordered_keys(value: Mapping[object, object]) -> list[tuple[str, object]]:
    items = [(key if isinstance(key, str) else _key(key), item) for key, item in value.items()]
    index_keys = [pair for pair in items if _INDEX_KEY.fullmatch(pair[0])]
    index_keys = [pair for pair in index_keys if int(pair[0]) <= _MAX_INDEX]
    if not index_keys:
        return items
    # JavaScript enumerates array-index keys first, ascending, then the rest in order.
    first = sorted(index_keys, key=lambda pair: int(pair[0]))
    numeric = {key for key, _ in first}
    return first + [pair for pair in items if pair[0] not in numeric]


def _key(key: object) -> str:
    # JavaScript object keys are strings: String(key) of a number or boolean.
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        if -_SAFE_INT < key < _SAFE_INT:
            return str(key)
        try:
            key = float(key)
        except OverflowError:
            return "Infinity" if key > 0 else "-Infinity"
    if isinstance(key, float):
        if math.isnan(key):
            return "NaN"
        if math.isinf(key):
            return "Infinity" if key > 0 else "-Infinity"
        return number(key)
    raise TypeError(f"object keys must be str, int or float, not {type(key).__name__}")


def _write_scalar(value: object) -> str | None:
    """The JSON text of a non-container value, or None for a container/unknown type."""
    if value is None or value is True or value is False:
        return _CONSTANTS[value]
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int):
        return _int(value)
    if isinstance(value, float):
        return number(value) if math.isfinite(value) else "null"
    if isinstance(value, date):
        if not isinstance(value, datetime):
            # A bare date has no time zone; midnight UTC is what a JS Date of it prints.
            value = datetime(value.year, value.month, value.day, tzinfo=UTC)
        return _datetime(value)
    return None


_CONSTANTS: dict[object, str] = {None: "null", True: "true", False: "false"}


def _write(value: object, parts: list[str]) -> None:
    # Exact types first: the payloads the bridge emits hold nothing else, and a
    # type test is far cheaper than the isinstance chain below (subclasses,
    # dates, mappings that are not dicts).
    kind = type(value)
    if kind is str:
        parts.append(_string(value))  # type: ignore[arg-type]
        return
    if kind is float:
        # x - x is 0.0 for a finite x, NaN for NaN and the infinities.
        parts.append(number(value) if value - value == 0 else "null")  # type: ignore[operator,arg-type]
        return
    if kind is dict and _write_plain_dict(value, parts):  # type: ignore[arg-type]
        return
    scalar = _write_scalar(value)
    if scalar is not None:
        parts.append(scalar)
    elif isinstance(value, Mapping):
        parts.append("{")
        first = True
        for key, item in _ordered_keys(value):
            if not first:
                parts.append(",")
            first = False
            parts.append(_string(key))
            parts.append(":")
            _write(item, parts)
        parts.append("}")
    elif isinstance(value, list | tuple):
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _write(item, parts)
        parts.append("]")
    else:
        raise TypeError(f"cannot serialise {type(value).__name__} as JSON")


def _write_plain_dict(value: dict[object, object], parts: list[str]) -> bool:
    """Write a dict whose keys keep their order in JavaScript; False (nothing written) if not.

    Only str keys that cannot be array indexes (those start with a digit) qualify.
    """
    if not all(type(key) is str and key[:1] not in _DIGITS for key in value):
        return False
    parts.append("{")
    first = True
    for key, item in value.items():
        if not first:
            parts.append(",")
        first = False
        parts.append(_string(key))  # type: ignore[arg-type]
        parts.append(":")
        _write(item, parts)
    parts.append("}")
    return True
