"""How errors reach the user: input errors as their message, anything else logged with its traceback."""

from __future__ import annotations

import contextlib
import logging
import traceback
from typing import Any, Callable, Iterator

import streamlit as st

from polmap.io.dataset import DatasetError


log = logging.getLogger("polmap.app")


class UserError(Exception):
    """Something the user can fix; its message is shown as it is."""


# Errors caused by input: their message is shown, the session lives on. TypeError,
# KeyError and IndexError are programming errors here: logged with their traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, DatasetError, ValueError, FileNotFoundError, OSError)


def format_error(exc: BaseException, what: str = "", unexpected: bool = False) -> str:
    """One readable paragraph for an exception."""
    msg = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and msg.startswith(("'", '"')):
        msg = msg[1:-1]
    prefix = f"{what}: " if what else ""
    if unexpected:
        return f"{prefix}an unexpected error occurred ({type(exc).__name__}: {msg}). Your labels are saved; try again or reload the page."
    return f"{prefix}{msg}"


def _rerun_exceptions() -> tuple[type[BaseException], ...]:
    try:
        from streamlit.runtime.scriptrunner_utils.exceptions import RerunException, StopException

        return (RerunException, StopException)
    except ImportError:  # pragma: no cover - streamlit internals moved: logged, reruns then look like errors
        log.error("Streamlit's rerun/stop exceptions not found: polmap needs updating for this Streamlit")
        return ()


_FLOW = _rerun_exceptions()


@contextlib.contextmanager
def guarded(what: str = "") -> Iterator[None]:
    """Show any error inside the block as ``st.error`` (never a traceback); the page goes on.

    Input errors (:data:`USER_ERRORS`) show their message; anything unexpected
    shows its type and message and is logged with its traceback on the
    server. Streamlit's own rerun/stop signals pass through.
    """
    try:
        yield
    except _FLOW:
        raise
    except USER_ERRORS as exc:
        st.error(format_error(exc, what))
    except Exception as exc:  # noqa: BLE001
        log.error("unexpected error %s\n%s", what, traceback.format_exc())
        st.error(format_error(exc, what, unexpected=True))


def guarded_fragment(what: str, **fragment_options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``st.fragment`` whose errors are shown as messages (a fragment rerun bypasses the page's guard)."""
    import functools

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def body(*args: Any, **kwargs: Any) -> Any:
            with guarded(what):
                return fn(*args, **kwargs)

        return st.fragment(body, **fragment_options)

    return deco
