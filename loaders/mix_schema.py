"""One schema for a mix of sets: image layout and targets must agree; classes agree or are mapped (`class_map`).

Each stream's masks are rewritten through a 256-entry lookup table (its class index -> the mix's, None ->
ignore 255) after decoding; a stream whose classes already are the mix's has no table and costs nothing.
"""

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from segshards.loaders.source import ShardSet
from segshards.loaders.streams import Stream
from segshards.writer.errors import ConfigError
from segshards.writer.format.schema import IGNORE, SampleSchema

Lut = np.ndarray  # (256,) uint8: a stream's class index -> the mix's


def layout_of(schema: SampleSchema) -> tuple[object, ...]:
    """What every stream must share to be decoded into one batch."""
    return (schema.image, schema.channels, schema.mask, schema.meta)


def check_layouts(sets: Sequence[ShardSet]) -> list[SampleSchema]:
    """The streams' schemas, refused (naming both sets) unless image layout and targets agree."""
    schemas = []
    for shards in sets:
        if shards.schema is None:
            raise ConfigError(
                f"{shards.source}: a stream of a mix needs the set's folder (with manifest.json)"
            )
        schemas.append(shards.schema)
    first, a = sets[0].source, schemas[0]
    for shards, b in zip(sets[1:], schemas[1:], strict=True):
        if layout_of(a) != layout_of(b):
            raise ConfigError(
                f"mix: {shards.source} has images {b.image!r} with {b.channels} channel(s), {first} "
                f"{a.image!r} with {a.channels}: the streams of a mix must agree on images"
            )
        if a.targets != b.targets:
            names_a, names_b = [t.name for t in a.targets], [t.name for t in b.targets]
            raise ConfigError(
                f"mix: {shards.source} has targets {names_b}, {first} has {names_a}: a mix yields only "
                "targets common to all its streams, and these differ (mix sets with the same targets)"
            )
    return schemas


def class_lut(stream: Stream, schema: SampleSchema, classes: Sequence[str], first: str) -> Lut | None:
    """The mask lookup table of one stream into the mix's `classes`; None when it is the identity."""
    mapping = dict(stream.class_map or {})
    unknown = sorted(set(mapping) - set(schema.classes))
    if unknown:
        raise ConfigError(f"Stream({stream.source}): class_map names {unknown[0]!r}, not a class of the set")
    if not mapping:
        if tuple(schema.classes) == tuple(classes):
            return None
        index = next(
            (i for i, (x, y) in enumerate(zip(schema.classes, classes, strict=False)) if x != y),
            min(len(schema.classes), len(classes)),
        )
        mine = schema.classes[index] if index < len(schema.classes) else "(none)"
        theirs = classes[index] if index < len(classes) else "(none)"
        raise ConfigError(
            f"mix: {stream.source} class {index} is {mine!r}, {first} has {theirs!r}: "
            "give the stream a class_map (its class name -> the mix's, or None to ignore)"
        )
    lut = np.arange(256, dtype=np.uint8)
    for i, name in enumerate(schema.classes):
        target = mapping.get(name, name)
        if target is None:
            lut[i] = IGNORE
        elif target in classes:
            lut[i] = classes.index(target)
        else:
            raise ConfigError(
                f"Stream({stream.source}): class {name!r} maps to {target!r}, not a class of the mix "
                f"({', '.join(classes[:8])}{' ...' if len(classes) > 8 else ''})"
            )
    return None if np.array_equal(lut, np.arange(256, dtype=np.uint8)) else lut


def mix_schema(
    streams: Sequence[Stream], sets: Sequence[ShardSet], classes: Sequence[str] | None
) -> tuple[SampleSchema, list[Lut | None]]:
    """The mix's schema (the first stream's, with `classes` if given) and each stream's mask table."""
    schemas = check_layouts(sets)
    names = tuple(classes) if classes is not None else tuple(schemas[0].classes)
    if not names:
        raise ConfigError("classes: empty; give the mix's class names")
    first = "the mix" if classes is not None else str(sets[0].source)
    luts = [class_lut(s, schema, names, first) for s, schema in zip(streams, schemas, strict=True)]
    sizes = {schema.size for schema in schemas}
    size = schemas[0].size if len(sizes) == 1 else None
    return replace(schemas[0], classes=names, size=size), luts


__all__ = ["Lut", "mix_schema"]
