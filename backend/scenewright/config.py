"""The one from_dict/to_dict of every config dataclass.

Config files written by other tools (diffusers, transformers) carry more keys
than our classes use (versions, class names, training-only fields): unknown and
private (`_...`) keys are ignored, known ones are taken as they are.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, TypeVar

T = TypeVar("T", bound="ConfigMixin")


class ConfigMixin:
    """Mixed into @dataclass configs."""

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in (data or {}).items() if k in names and not k.startswith("_")})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]
