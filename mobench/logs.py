"""Library output to a log file, mobench's own output to the console.

During a run the libraries speak a lot on the console: datasets' "Generating train split" bars,
transformers' "Loading weights" bars and FutureWarnings, trl's and peft's logging. :func:`library_output`
sends all of it to a log file (the run folder's ``run.log`` once the runner knows the folder; kept in
memory until then) and leaves the console to mobench's own progress, notes and errors. It uses only the
standard switches the libraries honour, never their internals:

- ``sys.stdout``/``sys.stderr`` are redirected (:func:`contextlib.redirect_stderr`): tqdm bars (transformers'
  and datasets' own, huggingface_hub's) and ``print`` write to the stream current when they start;
- the ``logging`` handlers of the libraries' loggers are pointed at the log (``StreamHandler.setStream``),
  whether they were set up before the block or during it, and a root handler catches the loggers that
  propagate (trl, peft, accelerate, sentence-transformers);
- ``warnings.showwarning`` writes library warnings (``FutureWarning``, ``UserWarning`` of transformers ...)
  to the log in Python's own format and hands mobench's warnings (a corrupt row, a damaged manifest)
  to the previous display.

mobench's own consoles must be bound to the real stream before the block (``Console(file=sys.stderr)``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator, TextIO

#: The log file of a run, in its folder.
RUN_LOG = "run.log"
#: The libraries whose loggers are redirected (their own handlers, set up at import time).
LIBRARY_LOGGERS = ("transformers", "datasets", "huggingface_hub", "trl", "peft", "accelerate",
                   "sentence_transformers", "torch", "urllib3", "filelock", "fsspec")


class LibraryLog(io.TextIOBase):
    """A text stream for library output: kept in memory until :meth:`attach` names its file, then appended there.

    After :meth:`close` it writes to ``fallback`` (the stream it replaced), so a handler that a library
    created during the block keeps working afterwards. ``tee``: also write everything there (``--verbose``).
    """

    encoding = "utf-8"

    def __init__(self, fallback: TextIO, tee: TextIO | None = None):
        super().__init__()
        self._fallback, self._tee = fallback, tee
        self._pending: list[str] = []
        self._file: TextIO | None = None
        self._done = False
        self.path: Path | None = None

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if self._done:
            return self._fallback.write(text)
        if self._tee is not None:
            self._tee.write(text)
        if self._file is not None:
            self._file.write(text)
        else:
            self._pending.append(text)
        return len(text)

    def flush(self) -> None:
        for stream in (self._file, self._tee, self._fallback if self._done else None):
            if stream is not None:
                stream.flush()

    def attach(self, path: str | Path) -> Path:
        """From now on write to ``path`` (appended: a resumed run keeps its earlier log), with what came before."""
        path = Path(path)
        if self._file is not None and self.path == path:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a", encoding="utf-8", buffering=1)
        handle.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: library output "
                     "(warnings, logging, progress bars) ---\n")
        handle.write("".join(self._pending))
        self._pending.clear()
        if self._file is not None:
            self._file.close()
        self._file, self.path = handle, path
        return path

    @property
    def text(self) -> str:
        """What was written before :meth:`attach` (empty once attached)."""
        return "".join(self._pending)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._done = True


def is_mobench_warning(category: type, filename: str) -> bool:
    """Warnings mobench itself raises (a corrupt row, a damaged manifest) stay on the console."""
    if (getattr(category, "__module__", "") or "").startswith("mobench"):
        return True
    import mobench

    root = os.path.dirname(os.path.abspath(mobench.__file__))
    return os.path.abspath(filename).startswith(root + os.sep)


def _library_handlers() -> list[logging.StreamHandler]:
    handlers = []
    for name in LIBRARY_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handlers.append(handler)
    return handlers


@contextlib.contextmanager
def library_output(path: str | Path | None = None, verbose: bool = False) -> Iterator[LibraryLog]:
    """Inside the block, library output goes to a :class:`LibraryLog` (to ``path`` now, or once attached).

    ``verbose``: also show it on the console, as without the block. A block that raises before any file was
    attached leaves what it caught in a temporary file and names it on stderr, so nothing is lost.
    """
    console = sys.stderr
    log = LibraryLog(fallback=console, tee=console if verbose else None)
    if path is not None:
        log.attach(path)
    moved = [(h, h.setStream(log)) for h in _library_handlers() if h.stream is not log]
    root = logging.StreamHandler(log)
    root.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(root)
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if file is None and not is_mobench_warning(category, filename):
            log.write(warnings.formatwarning(message, category, filename, lineno, line))
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    failed = False
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield log
    except BaseException:
        failed = True
        raise
    finally:
        warnings.showwarning = previous
        logging.getLogger().removeHandler(root)
        for handler, stream in moved:
            handler.setStream(stream)
        for handler in _library_handlers():  # set up by a library during the block: back to the console
            if handler.stream is log:
                handler.setStream(console)
        if failed and log.path is None and log.text.strip():
            fd, spare = tempfile.mkstemp(prefix="mobench-", suffix=".log")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(log.text)
            console.write(f"library output of the failed command: {spare}\n")
        log.close()
