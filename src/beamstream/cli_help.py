"""How ``--help`` names what each option and argument takes: flags nothing, the others a word in capitals
(INTEGER, FLOAT, TEXT, PATH, a ``metavar`` such as SECONDS or FILE, choices as ``[a|b]``).

typer 0.2x (which carries its own copy of click) labels every parameter in its rich help with a type of its own
making, ``<bool>``, ``<int range>``, ``<str>``, ``<list[str]>``, flags and ``--help`` included, and shows an
argument's type beside its ``metavar``. :func:`readable_help_types` makes every beamstream command say it as
click did; typer releases without those labels are left as they are.
"""

from __future__ import annotations

from typing import Any

TYPE_NAMES = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "bool": "BOOLEAN", "path": "PATH", "file": "FILE",
              "uuid": "UUID", "datetime": "DATETIME"}


def readable_type(label: str) -> str:
    """typer's label of a type (``<int range>``, ``<list[str]>``, ``<int,int>``, ``<debug|info>``) as help shows it:
    ``INTEGER``, ``TEXT``, ``INTEGER INTEGER``, ``[debug|info]``."""
    inner = label.strip().removeprefix("<").removesuffix(">")
    if inner.startswith("list[") and inner.endswith("]"):
        inner = inner[len("list["):-1]
    inner = inner.removesuffix(" range")
    if "|" in inner:
        return f"[{inner}]"
    return " ".join(TYPE_NAMES.get(part.strip(), part.strip().upper()) for part in inner.split(","))


def _option_type(self: Any, ctx: Any) -> str | None:
    if self.is_flag or self.count:
        return None
    if self.metavar is not None:
        return self.metavar
    return readable_type(self.display_type(ctx))


def _argument_type(self: Any, ctx: Any) -> str | None:
    if self.metavar is not None:  # the argument is shown by it already (SPEC, URL)
        return None
    return readable_type(self.display_type(ctx))


def readable_help_types() -> None:
    """Make typer's help show :func:`readable_type` names, nothing for flags, and an argument's ``metavar`` once
    (for every typer command of this process; a typer release without its own type labels is left alone)."""
    from typer import core

    option, argument = getattr(core, "TyperOption", None), getattr(core, "TyperArgument", None)
    if not all(hasattr(kind, "display_type_rich") and hasattr(kind, "display_type") for kind in (option, argument)):
        return
    option.display_type_rich = _option_type
    argument.display_type_rich = _argument_type
