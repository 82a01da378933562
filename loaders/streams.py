"""`Stream`: one shard set of a mix and how much of it an epoch takes (the names MosaicML streaming uses)."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segshards.writer.errors import ConfigError


@dataclass(frozen=True)
class Stream:
    """A set in a mix of sets (`make_loader([Stream(a), Stream(b, repeat=2)], ...)`).

    At most one of: `choose=N` samples per epoch (without replacement while N <= the split's size, else every
    sample N // size times plus a choice of the rest), `repeat=R` (every sample R times; 1.5 = once plus a
    choice of half), `proportion=p` (p * the loader's `epoch_size` samples); none of them: every sample once.
    `class_map` maps this set's class names to the mix's (a name, or None for ignore 255); a class it does
    not name keeps its own name, which the mix must have.
    """

    source: str | Path
    choose: int | None = field(default=None, kw_only=True)
    repeat: float | None = field(default=None, kw_only=True)
    proportion: float | None = field(default=None, kw_only=True)
    class_map: Mapping[str, str | None] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        given = [k for k in ("choose", "repeat", "proportion") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ConfigError(
                f"Stream({self.source}): give at most one of choose/repeat/proportion, not {given}"
            )
        if self.choose is not None and (type(self.choose) is not int or self.choose < 0):
            raise ConfigError(f"Stream({self.source}): choose={self.choose!r} must be an integer >= 0")
        for name in ("repeat", "proportion"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and value >= 0):
                raise ConfigError(f"Stream({self.source}): {name}={value!r} must be a number >= 0")
        if self.class_map is not None and not isinstance(self.class_map, Mapping):
            raise ConfigError(
                f"Stream({self.source}): class_map must be a dict of class name -> name or None"
            )

    @property
    def plain(self) -> bool:
        """True for a stream taking every sample once with its own classes."""
        return self.choose is None and self.repeat is None and self.proportion is None and not self.class_map

    def wanted(self, size: int, epoch_size: int | None) -> int:
        """Samples this stream contributes to an epoch, from the split's `size`."""
        if self.choose is not None:
            return self.choose
        if self.repeat is not None:
            return round(self.repeat * size)
        if self.proportion is not None:
            if epoch_size is None:
                raise ConfigError(f"Stream({self.source}): proportion={self.proportion} needs epoch_size=")
            return round(self.proportion * epoch_size)
        return size

    def describe(self) -> dict[str, Any]:
        """What a run records of this stream (JSON values)."""
        out: dict[str, Any] = {"source": str(self.source)}
        for name in ("choose", "repeat", "proportion"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.class_map:
            out["class_map"] = dict(self.class_map)
        return out


__all__ = ["Stream"]
