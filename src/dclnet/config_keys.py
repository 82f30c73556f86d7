"""Describing the config keys for ``dclnet config --keys``: type, default and comment.

The listing is read from the schema's source (:mod:`dclnet.config`): each field's
annotation and trailing ``# comment`` as written on its line, so it is as current as the
schema itself. Import these names from :mod:`dclnet.config`, which re-exports them.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any

from dclnet.config import _CHOICES, Config


@dataclass(frozen=True)
class KeyInfo:
    """One config key as ``dclnet config --keys`` lists it."""

    key: str  # "section.name"
    type: str  # the annotation as written in the source, e.g. "int" or "str | None"
    default: Any
    comment: str  # the trailing "# comment" of the field's line ("" if none)
    section_doc: str  # first line of the section dataclass's docstring


# ``name: annotation = default  # comment`` (one field per line, as in dclnet.config's sections).
_FIELD_LINE = re.compile(r"^\s+(\w+):\s*([^=]+?)\s*=\s*(.*?)\s*(?:#\s*(.*))?$")


def describe_keys() -> list[KeyInfo]:
    """Every key of :class:`Config`: type, default and the comment on its source line.

    The comments come from the section dataclasses' source (``inspect.getsource``), so the
    listing is as current as the schema itself.
    """
    import inspect

    infos = []
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        parsed = {}
        for line in inspect.getsource(cls).splitlines():
            match = _FIELD_LINE.match(line)
            if match:
                parsed[match.group(1)] = (match.group(2), match.group(4) or "")
        doc = (inspect.getdoc(cls) or "").splitlines()[0] if cls.__doc__ else ""
        defaults = cls()
        for f in dataclasses.fields(cls):
            annotation, comment = parsed.get(f.name, (str(f.type), ""))
            infos.append(
                KeyInfo(
                    f"{section.name}.{f.name}",
                    annotation,
                    getattr(defaults, f.name),
                    comment.strip(),
                    doc,
                )
            )
    return infos


def format_keys() -> str:
    """The text of ``dclnet config --keys``: one aligned line per key, grouped by section."""
    infos = describe_keys()

    def default_text(value: Any) -> str:
        if isinstance(value, tuple):
            return "[" + ", ".join(default_text(v) for v in value) + "]"
        if value is None:
            return "null"
        if isinstance(value, bool):
            return str(value).lower()
        return str(value)

    rows = []
    for info in infos:
        note = info.comment
        if info.key in _CHOICES:  # "one of ARCHS" -> "one of resnet18, resnet34, resnet50"
            valid = "one of " + ", ".join(default_text(c) for c in _CHOICES[info.key])
            note, named = re.subn(r"one of [A-Z_]+", valid, note)
            if not named:
                note = f"{note} ({valid})" if note else valid
        rows.append((info.key, info.type, default_text(info.default), note, info))
    width_key = max(len(r[0]) for r in rows)
    width_type = max(len(r[1]) for r in rows)
    width_default = max(len(r[2]) for r in rows)
    lines: list[str] = []
    section = None
    for key, type_, default, note, info in rows:
        if info.key.split(".")[0] != section:
            section = info.key.split(".")[0]
            lines += [""] if lines else []
            lines.append(f"# {section}: {info.section_doc}")
        line = f"{key:<{width_key}}  {type_:<{width_type}}  {default:<{width_default}}  {note}"
        lines.append(line.rstrip())
    return "\n".join(lines)
