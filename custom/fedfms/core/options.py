"""Typed options: every value that enters the package from a config file or a command line is checked
and converted where it enters (network constructors, transform factories, bundle handlers, the site
executor, job and study settings), so a value of the wrong type is an error naming the option, the value
and what was expected, raised before any model is built or data read, and never silently truthy.

``python -m monai.bundle run ... --flag false`` hands the string ``'false'`` through (fire reads only
Python literals such as ``False``), so booleans accept the strings true/false, 1/0 and yes/no in any case.
"""

from __future__ import annotations

from typing import Collection, Optional

_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


class OptionError(ValueError):
    """An option has a value of the wrong type or out of range; the message names option and value."""


def as_bool(name: str, value: object) -> bool:
    """``value`` as a bool: True/False, 1/0, or the strings true/false, 1/0, yes/no (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise OptionError(f"option {name}={value!r}: expected a boolean (true/false, 1/0, yes/no)")


def _number(name: str, value: object, kind: str) -> float:
    if isinstance(value, bool):  # bool is an int subclass: True is not a number of epochs
        raise OptionError(f"option {name}={value!r}: expected {kind}, got a boolean")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".en") else int(value)
        except ValueError:
            pass
    raise OptionError(f"option {name}={value!r}: expected {kind}")


def as_int(name: str, value: object, minimum: Optional[int] = None) -> int:
    """``value`` as an int (ints, integral floats and numeric strings); at least ``minimum`` if given."""
    number = _number(name, value, "an integer")
    if isinstance(number, float):
        if not number.is_integer():
            raise OptionError(f"option {name}={value!r}: expected an integer")
        number = int(number)
    if minimum is not None and number < minimum:
        raise OptionError(f"option {name}={value!r}: expected an integer >= {minimum}")
    return number


def as_float(name: str, value: object, minimum: Optional[float] = None, above: Optional[float] = None,
             maximum: Optional[float] = None) -> float:
    """``value`` as a finite float (numbers and numeric strings); >= ``minimum`` / > ``above`` / <= ``maximum``
    if given."""
    number = float(_number(name, value, "a number"))
    if number != number or number in (float("inf"), float("-inf")):
        raise OptionError(f"option {name}={value!r}: expected a finite number")
    if minimum is not None and number < minimum:
        raise OptionError(f"option {name}={value!r}: expected a number >= {minimum}")
    if above is not None and number <= above:
        raise OptionError(f"option {name}={value!r}: expected a number > {above}")
    if maximum is not None and number > maximum:
        raise OptionError(f"option {name}={value!r}: expected a number <= {maximum}")
    return number


def as_choice(name: str, value: object, choices: Collection[str]) -> str:
    """``value`` if it is one of ``choices`` (strings)."""
    if not isinstance(value, str) or value not in choices:
        raise OptionError(f"option {name}={value!r}: expected one of {', '.join(map(repr, choices))}")
    return value


def as_names(name: str, value: object) -> tuple[str, ...]:
    """``value`` as a tuple of strings (a list or tuple of them); a bare string is an error, because
    iterating it would silently yield its characters."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise OptionError(f"option {name}={value!r}: expected a list of names, e.g. ['UCL']")
    return tuple(value)
