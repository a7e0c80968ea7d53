"""What every command module shares: the consoles, the ``--db`` option and the user-error wrapper.

Errors a user can fix print one message naming what is wrong and what to do, and
exit with status 2; nothing is written by a command that fails validation.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

__all__ = ["DEFAULT_DB", "DbOption", "console", "err", "user_errors"]

console = Console()
err = Console(stderr=True)
DEFAULT_DB = "sqlite:///comptroller.db"
DbOption = Annotated[str, typer.Option("--db", envvar="COMPTROLLER_DB",
                                       help="Ledger URL: sqlite:///path, postgresql://... or memory://")]
_F = TypeVar("_F", bound=Callable[..., Any])


def user_errors(*errors: type[BaseException]) -> Callable[[_F], _F]:
    """A decorator: the listed exceptions print ``error: <message>`` on stderr and exit with status 2."""
    def decorate(func: _F) -> _F:
        @wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except errors as exc:
                err.print(Text("error: ", style="red") + Text(str(exc)), highlight=False)
                raise typer.Exit(2) from None
        return wrapper  # type: ignore[return-value]
    return decorate
