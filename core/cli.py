"""The thin command line every stage shares: arguments, logging, and one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from core.config import PARAMS_FILE, Params, load_params
from core.errors import DeepGuardError, redact_credentials

log = logging.getLogger(__name__)


def add_overrides_argument(parser: argparse.ArgumentParser) -> None:
    """``--set KEY.PATH=VALUE`` (repeatable) into ``args.overrides``, for ``core.config.load_params``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a parameter, e.g. --set training.epochs=1 (repeatable)",
    )


def stage_parser(name: str, description: str, module: str | None = None) -> argparse.ArgumentParser:
    """Return the argument parser with the options every stage takes.

    Args:
        name: The stage name.
        description: The ``--help`` text.
        module: The module ``python -m`` runs (default: ``stages.<name>``).

    Returns:
        The parser; its ``prog`` names the module, which error messages repeat.
    """
    parser = argparse.ArgumentParser(prog=f"python -m {module or f'stages.{name}'}", description=description)
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="params file (default: params.yaml)")
    add_overrides_argument(parser)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="pipeline workspace holding data/, models/ and reports/ (default: current folder)",
    )
    return parser


class RedactCredentials(logging.Filter):
    """Applies :func:`redact_credentials` to every record a handler writes, ours and the libraries'."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite a message that quotes a URL with credentials; never drops a record."""
        message = record.getMessage()
        redacted = redact_credentials(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


# Modules whose database session a stop must not cut short: unwound mid-transaction, the session keeps
# SQLite's write lock, and ending the MLflow run as KILLED then fails with "database is locked".
_FINISH_BEFORE_STOPPING = (
    "sqlalchemy.",
    "mlflow.store.db.",
    "mlflow.store.tracking.",
    "mlflow.store.model_registry.",
)


def _send_again(name: str) -> None:
    """Send the stop signal ``name`` to this process again in 50 ms, from another thread."""
    again = threading.Timer(0.05, os.kill, (os.getpid(), signal.Signals[name]))
    again.daemon = True
    again.start()


def _inside_store_call(frame: FrameType | None) -> bool:
    """Whether ``frame`` or one of its callers belongs to the MLflow store (``_FINISH_BEFORE_STOPPING``)."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(_FINISH_BEFORE_STOPPING):
            return True
        frame = frame.f_back
    return False


def _stop_when_the_store_call_returns(name: str) -> None:
    """Raise ``KeyboardInterrupt(name)`` in the caller of the main thread's outermost MLflow store call.

    A profile function sees each frame return; the first one whose callers are all outside the store is
    that call's, and an exception raised there surfaces in its caller as if the call had raised it, after
    the call's database session ended. (Sending the signal again after a delay could land in the next store
    call each time, and a stage that writes to the store in a loop then finished as if never stopped.)
    """

    def on_return(frame: FrameType, event: str, arg: object) -> None:
        if event == "return" and not _inside_store_call(frame.f_back):
            sys.setprofile(None)
            raise KeyboardInterrupt(name)

    sys.setprofile(on_return)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Kubernetes stops a pod with SIGTERM: unwinding like Ctrl-C runs the `finally` blocks that remove
    # temporary outputs and end the MLflow run as KILLED, before the SIGKILL that follows the grace period.
    name = signal.Signals(signum).name
    if _inside_store_call(frame):
        _stop_when_the_store_call_returns(name)
        return
    raise KeyboardInterrupt(name)


@contextlib.contextmanager
def _stop_signals_unwind() -> Iterator[None]:
    """Within: SIGTERM and Ctrl-C raise ``KeyboardInterrupt``, even if they arrive during garbage collection.

    A signal handler runs wherever the main thread is. Inside a weakref callback or a ``__del__``, Python
    prints the handler's exception and carries on, so the stage would finish as if never stopped; the
    signal is sent again a moment later, when the main thread is back in ordinary code. Inside a call to
    the MLflow store the stop waits until that call has returned, so that its database session ends first.
    """
    previous_hook = sys.unraisablehook
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}

    def redeliver_dropped_interrupt(unraisable: sys.UnraisableHookArgs) -> None:
        interrupt = unraisable.exc_value
        name = interrupt.args[0] if isinstance(interrupt, KeyboardInterrupt) and interrupt.args else None
        if name not in ("SIGTERM", "SIGINT"):
            previous_hook(unraisable)
            return
        log.warning("%s arrived during garbage collection, which drops it: sending it again", name)
        _send_again(name)

    signal.signal(signal.SIGTERM, _interrupt)
    if previous[signal.SIGINT] is signal.default_int_handler:  # not where the parent ignores Ctrl-C
        signal.signal(signal.SIGINT, _interrupt)
    sys.unraisablehook = redeliver_dropped_interrupt
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class EntryPointName(logging.Filter):
    """Names the records of ``python -m stages.train`` after ``stages.train``, not ``__main__``.

    Modules log under ``__name__``, which is ``__main__`` for the module run with ``-m``; its import name
    tells a reader which stage or server wrote the line.
    """

    def __init__(self) -> None:
        super().__init__()
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        self.entry_point = spec.name.removesuffix(".__main__") if spec else "__main__"

    def filter(self, record: logging.LogRecord) -> bool:
        """Rename a ``__main__`` record; never drops one."""
        if record.name == "__main__":
            record.name = self.entry_point
        return True


def configure_logging() -> None:
    """Log to stdout once, in the entry point, never with URL credentials; quiet the chattiest libraries."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactCredentials())
        handler.addFilter(EntryPointName())
    for noisy in ("urllib3", "git", "matplotlib", "PIL", "h5py", "absl", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_stage(
    name: str,
    main: Callable[[argparse.Namespace, Params], object],
    parser: argparse.ArgumentParser,
    argv: list[str] | None = None,
) -> int:
    """Parse arguments, set up logging, load params and call ``main``; expected errors become one line.

    Args:
        name: The stage name, used in messages.
        main: Receives the parsed arguments and the validated params.
        parser: From :func:`stage_parser`, possibly with stage-specific options added.
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit code: 0 on success, 2 on an expected error, 130 when interrupted (SIGTERM, Ctrl-C).
    """
    args = parser.parse_args(argv)
    module = parser.prog.removeprefix("python -m ")
    configure_logging()
    with _stop_signals_unwind():
        try:
            if args.workdir is not None:
                # A pipeline run's first stage creates its run folder (an Airflow pod's
                # /workspace/runs/<run id>).
                args.workdir.mkdir(parents=True, exist_ok=True)
                os.chdir(args.workdir)
            params = load_params(args.params, args.overrides)
            main(args, params)
        except DeepGuardError as exc:
            log.error("%s failed: %s", name, exc)
            print(f"{module}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            log.error("%s interrupted (%s): partial outputs removed", name, exc or "SIGINT")
            print(f"{module}: interrupted", file=sys.stderr)
            return 130
        return 0
