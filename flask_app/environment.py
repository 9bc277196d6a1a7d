"""The web app's numeric environment variables, read so that a bad value names its variable."""

from __future__ import annotations

import os

# Every number the web app, its feedback route and its gunicorn settings read from the environment, and its
# type; the defaults stay beside the code that uses them.
NUMBERS: dict[str, type[int] | type[float]] = {
    "MAX_CONTENT_LENGTH": int,
    "MAX_BATCH_BYTES": int,
    "MAX_UPLOAD_BYTES_IN_FLIGHT": int,
    "PREDICTOR_TIMEOUT_S": float,
    "WEB_PROXY_HOPS": int,
    "WEB_THREADS": int,
    "WEB_WORKERS": int,
    "FEEDBACK_PER_MINUTE": float,
    "FEEDBACK_BURST": int,
    "FEEDBACK_MAX_PENDING_BYTES": int,
}


def number(name: str, default: float) -> int | float:
    """The value of the numeric environment variable ``name``; unset or empty: ``default``.

    Args:
        name: a key of :data:`NUMBERS`.
        default: the value when the variable is unset or empty.

    Returns:
        The number, of the variable's type.

    Raises:
        ValueError: naming the variable, when its value is not a number of its type or is negative
            (``MAX_CONTENT_LENGTH=10MB`` failed every gunicorn worker with ``invalid literal for int()``).
    """
    kind = NUMBERS[name]
    text = os.environ.get(name, "")
    if not text:
        return kind(default)
    what = "a whole number" if kind is int else "a number"
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"environment variable {name}: expected {what}, got {text!r}") from None
    if not value >= 0:  # also NaN
        raise ValueError(f"environment variable {name}: expected {what} of at least 0, got {text!r}")
    return value


def check() -> list[str]:
    """The problems of every numeric variable set in the environment, one line each (none: ``[]``)."""
    problems = []
    for name in NUMBERS:
        try:
            number(name, 0)
        except ValueError as exc:
            problems.append(str(exc))
    return problems
