"""The error every stage reports as one line instead of a traceback, never with a credential in it."""

from __future__ import annotations

import re

# How a stage process ends (``core.cli.run_stage``), which the Airflow DAG reads to decide on retries.
EXIT_ERROR = 2  # a DeepGuardError or a usage error: bad input or settings; a retry fails the same way
EXIT_TRANSIENT = 75  # a TransientError: worth retrying (sysexits.h EX_TEMPFAIL, "try again later")
EXIT_INTERRUPTED = 130  # stopped by SIGTERM or Ctrl-C
# Exit codes after which retrying the stage cannot help: the task fails at once.
PERMANENT_EXIT_CODES = (EXIT_ERROR,)

# The userinfo of a URL (``scheme://user:password@``) anywhere in a text, up to the last "@" before the host.
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^\s/'\"<>]*@")


def redact_credentials(text: str) -> str:
    """Hide the ``user:password@`` of every URL in a text, for logs and error messages.

    Args:
        text: A URI, or a message that may quote one (an exception from requests or MLflow).

    Returns:
        The text with each URL's userinfo replaced by ``***``.
    """
    return _URL_USERINFO.sub(r"\g<scheme>***@", text)


class DeepGuardError(Exception):
    """An expected failure with a message a user can act on (bad input, missing credentials, ...).

    Its text never shows the credentials of a URL it quotes (a tracking or predictor URI with ``user:pass@``),
    wherever it ends up: the one-line CLI error, a log, an HTTP answer.
    """

    def __str__(self) -> str:
        return redact_credentials(super().__str__())


class TransientError(DeepGuardError):
    """An expected failure that may pass on its own (a server unreachable): exit ``EXIT_TRANSIENT``.

    Every other DeepGuardError exits ``EXIT_ERROR``, which the Airflow DAG fails at once, without retries.
    """
