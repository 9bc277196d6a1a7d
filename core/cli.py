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
from core.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_TRANSIENT,
    DeepGuardError,
    TransientError,
    redact_credentials,
)

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
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="partial params file whose values replace those of --params, before any --set (params-gpu.yaml)",
    )
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

# How long a stop waits before it is sent again, when the main thread has not been seen unwinding on it.
_RESEND_S = 0.25


class _Stop:
    """The stop signal a stage received, sent again until the main thread is seen unwinding on it.

    A signal handler runs wherever the main thread is, and its ``KeyboardInterrupt`` can be lost there:
    Python drops it inside a weakref callback or a ``__del__``, and TensorFlow's C++ code swallows it, or
    turns it into a ``ValueError``, inside a Python call it makes (train then ran to its end and exited 0
    after a SIGTERM, or exited 1). So a stop signal starts a thread that sends it to the main thread again
    every ``_RESEND_S`` until the handler finds the main thread in an ``except`` or ``finally`` block that
    unwinds on a stop, or the stage returns; a stop sent again never raises inside such a block, so it never
    cuts cleanup short. A stage that ends any other way after a stop counts as stopped.
    """

    def __init__(self) -> None:
        self.name: str | None = None
        self.finished = False
        self.resent = False  # the signal the handler is about to see came from the resending thread
        self._resending: threading.Event | None = None  # set: stop resending
        self._threads: list[threading.Thread] = []

    def receive(self, name: str) -> None:
        """Remember the first stop signal; send this one again until :meth:`stop_resending`."""
        self.name = self.name or name
        if self._resending is None:
            self._resending = threading.Event()
            again = (self._resending, signal.Signals[name])
            thread = threading.Thread(target=self._resend, args=again, name="resend-stop", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _resend(self, done: threading.Event, signum: signal.Signals) -> None:
        main = threading.main_thread().ident
        while not done.wait(_RESEND_S):
            self.resent = True
            signal.pthread_kill(main, signum)

    def stop_resending(self) -> None:
        """The main thread unwinds on the stop: no need to send it again."""
        if self._resending is not None:
            self._resending.set()
            self._resending = None

    def settle(self) -> None:
        """The stage has returned: ignore stop signals from now on, and wait until none is being sent."""
        self.finished = True
        self.stop_resending()
        for thread in self._threads:
            thread.join()


_stop = _Stop()


def stop_received() -> str | None:
    """The stop signal this stage received (``SIGTERM``, ``SIGINT``) or None, whatever it raised since."""
    return _stop.name


def _unwinding_on_a_stop(exc: BaseException | None) -> bool:
    """Whether ``exc``, the exception being handled, is a stop's ``KeyboardInterrupt`` or follows from one."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


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
            if sys.exc_info()[1] is None:  # else an except or finally block runs: the resender tries again
                raise KeyboardInterrupt(name)

    sys.setprofile(on_return)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Kubernetes stops a pod with SIGTERM: unwinding like Ctrl-C runs the `finally` blocks that remove
    # temporary outputs and end the MLflow run as KILLED, before the SIGKILL that follows the grace period.
    if _stop.finished:
        return
    resent, _stop.resent = _stop.resent, False
    _stop.receive(signal.Signals(signum).name)
    handling = sys.exc_info()[1]
    if resent and handling is not None:
        # An except or finally block runs: unwinding on the stop already, or some other handler that the
        # stop, sent again, waits for. Cleanup is never cut short by a stop sent again.
        if _unwinding_on_a_stop(handling):
            _stop.stop_resending()
        return
    if _inside_store_call(frame):
        _stop_when_the_store_call_returns(_stop.name)
        return
    raise KeyboardInterrupt(_stop.name)


@contextlib.contextmanager
def _stop_signals_unwind() -> Iterator[_Stop]:
    """Within: SIGTERM and Ctrl-C raise ``KeyboardInterrupt`` in the main thread, until it unwinds on one.

    See :class:`_Stop` for where the exception can be lost and how it is sent again. Inside a call to the
    MLflow store the stop waits until that call has returned, so that its database session ends first.

    Yields:
        The stop: its ``name`` is the signal received, or None.
    """
    global _stop
    _stop = _Stop()
    previous_hook = sys.unraisablehook
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}

    def log_dropped_interrupt(unraisable: sys.UnraisableHookArgs) -> None:
        interrupt = unraisable.exc_value
        name = interrupt.args[0] if isinstance(interrupt, KeyboardInterrupt) and interrupt.args else None
        if name not in ("SIGTERM", "SIGINT"):
            previous_hook(unraisable)
            return
        log.warning("%s arrived during garbage collection, which drops it: sending it again", name)

    signal.signal(signal.SIGTERM, _interrupt)
    if previous[signal.SIGINT] is signal.default_int_handler:  # not where the parent ignores Ctrl-C
        signal.signal(signal.SIGINT, _interrupt)
    sys.unraisablehook = log_dropped_interrupt
    try:
        yield _stop
    finally:
        _stop.settle()
        sys.unraisablehook = previous_hook
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _stop = _Stop()


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
        The process exit code: 0 on success, 2 on an expected error that a retry would meet again (bad
        input, missing credentials), 75 on a transient one (a server unreachable), 130 when interrupted
        (SIGTERM, Ctrl-C): ``core.errors``' ``EXIT_*``, which the Airflow DAG reads to decide on retries.
    """
    args = parser.parse_args(argv)
    module = parser.prog.removeprefix("python -m ")
    configure_logging()
    with _stop_signals_unwind() as stop:
        try:
            if args.workdir is not None:
                _paths_from_the_current_folder(args)
            # Before the workspace is created: a bad parameter leaves no empty run folder behind.
            params = load_params(args.params, args.overrides, profile=args.profile)
            if args.workdir is not None:
                _enter_workspace(args.workdir)
            main(args, params)
        except KeyboardInterrupt as exc:
            return _interrupted(name, module, str(exc) or "SIGINT")
        except BaseException as exc:
            if stop.name is not None:  # a library turned the stop into its own error
                log.warning("%s: the %s surfaced as %s: %s", name, stop.name, type(exc).__name__, exc)
                return _interrupted(name, module, stop.name)
            if not isinstance(exc, DeepGuardError):
                raise
            if not _one_stream():  # a terminal (make, dvc repro) shows both: the message once
                log.error("%s failed: %s", name, exc)
            print(f"{module}: error: {exc}", file=sys.stderr)
            return EXIT_TRANSIENT if isinstance(exc, TransientError) else EXIT_ERROR
        if stop.name is not None:  # lost on the way and not sent again before the stage ended
            return _interrupted(name, module, stop.name, "it had finished; its outputs are complete")
        return 0


class WorkdirError(DeepGuardError):
    """``--workdir`` names something that cannot be the workspace folder (a file, a path through one)."""


def _enter_workspace(workdir: Path) -> None:
    """Create ``workdir`` if needed and make it the current folder.

    A pipeline run's first stage creates its run folder (an Airflow pod's /workspace/runs/<run id>).
    """
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        os.chdir(workdir)
    except OSError as exc:
        raise WorkdirError(f"--workdir {workdir}: cannot create or enter it: {exc.strerror or exc}") from None


def _paths_from_the_current_folder(args: argparse.Namespace) -> None:
    """Make ``--params``, ``--profile`` and ``DEEPGUARD_DATA`` absolute before ``--workdir`` moves away.

    A path the user typed is relative to where they typed it (``--workdir /tmp/ws`` from a checkout must
    still read the checkout's params.yaml); the workspace's own files stay relative to the workspace.
    """
    from core.names import DATA_ENV
    from core.settings import settings

    args.params = args.params.expanduser().absolute()
    if args.profile is not None:
        args.profile = args.profile.expanduser().absolute()
    data = settings().data
    if data is not None and not data.expanduser().is_absolute():
        os.environ[DATA_ENV] = str(data.absolute())  # child processes and settings() alike


def _one_stream() -> bool:
    """Whether stdout (the log) and stderr reach the same file, terminal or pipe.

    Then the one-line error on stderr is all a reader needs; apart (a pod's log, a test's capture) the log
    gets it too, with its time.
    """
    try:
        return os.path.samestat(os.fstat(sys.stdout.fileno()), os.fstat(sys.stderr.fileno()))
    except (AttributeError, OSError, ValueError):  # a stream replaced by one without a file descriptor
        return False


def _interrupted(name: str, module: str, signal_name: str, outputs: str = "partial outputs removed") -> int:
    log.error("%s interrupted (%s): %s", name, signal_name, outputs)
    print(f"{module}: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED
