"""What `segshards audit` found, said three ways: kinds of each group (duplicates within a split, leaks
across the splits of one set, overlap between sets), a terminal summary, and a JSON record."""

import json
from collections import Counter
from typing import Any

from segshards.writer.share.audit import AuditResult, members, shown_members
from segshards.writer.share.near_duplicates import VIEWS, Group

KINDS = ("within_split", "leak", "overlap")
KIND_WORDS = {
    "within_split": "duplicates within a split",
    "leak": "leaks across splits",
    "overlap": "overlap between sets",
}
FAIL_ON = {"leaks": ("leak",), "overlap": ("overlap",), "any": KINDS}
SHOWN = 10  # groups in the terminal summary
SHOWN_MEMBERS = 4


def group_kinds(result: AuditResult, group: Group) -> list[str]:
    """The kinds a group is: two members in one split of one set, two splits of one set, two sets."""
    where = [(s.name, split) for s, split, _ in members(result, group)]
    kinds = []
    if max(Counter(where).values()) > 1:
        kinds.append("within_split")
    by_set: dict[str, set[str]] = {}
    for name, split in where:
        by_set.setdefault(name, set()).add(split)
    if any(len(splits) > 1 for splits in by_set.values()):
        kinds.append("leak")
    if len(by_set) > 1:
        kinds.append("overlap")
    return kinds


def counts(result: AuditResult) -> dict[str, Any]:
    """Groups and images per kind, and in all."""
    out: dict[str, Any] = {"groups": len(result.groups), "images_in_groups": 0}
    out.update({kind: {"groups": 0, "images": 0} for kind in KINDS})
    for group in result.groups:
        out["images_in_groups"] += len(group.members)
        for kind in group_kinds(result, group):
            out[kind]["groups"] += 1
            out[kind]["images"] += len(group.members)
    return out


def failed(result: AuditResult, fail_on: str | None) -> bool:
    """Whether a group of a kind that `--fail-on` names was found."""
    if fail_on is None:
        return False
    wanted = FAIL_ON[fail_on]
    return any(k in wanted for g in result.groups for k in group_kinds(result, g))


def to_json(result: AuditResult) -> dict[str, Any]:
    """The record `--json FILE` writes: settings, each set, counts, and every group with its members."""
    return {
        "threshold": result.config.threshold,
        "mode": result.config.mode,
        "hash": f"pHash and dHash (64 bits each) of {len(VIEWS)} views per image; a pair is near when both "
        "differ by at most `threshold` bits for one alignment; a group's max_distance is the largest distance "
        "of the links that join it (pixel-identical images: 0)",
        "sets": [
            {
                "set": s.name,
                "location": s.url,
                "compared_by": "perceptual" if s.perceptual else "exact",
                "why": s.why,
                "images": s.images,
                "unreadable": s.unreadable,
                "problems": s.problems,
            }
            for s in result.sets
        ],
        "counts": counts(result),
        "groups": [
            {
                "members": [
                    {"set": s.name, "split": split, "key": key} for s, split, key in members(result, g)
                ],
                "max_distance": g.max_distance,
                "kinds": group_kinds(result, g),
            }
            for g in result.groups
        ],
    }


def dumps(result: AuditResult) -> bytes:
    return (json.dumps(to_json(result), indent=2, sort_keys=True) + "\n").encode()


def summary_lines(result: AuditResult, elapsed_s: float) -> list[str]:
    """The terminal summary: each set, the counts per kind, the largest groups."""
    images = len(result.table)
    lines = [
        f"audit: {len(result.sets)} set{'s' * (len(result.sets) != 1)}, {images:,} images in {elapsed_s:.1f} s"
    ]
    for s in result.sets:
        per_split = ", ".join(f"{split} {s.images.get(split, 0):,}" for split in s.splits)
        bad = f"; {s.unreadable:,} unreadable" if s.unreadable else ""
        lines.append(f"  {s.name}: {per_split}{bad}; compared by {s.why}")
        lines.extend(f"    {p}" for p in s.problems[:3])
    c = counts(result)
    threshold = (
        f" (threshold {result.config.threshold} bits)" if any(s.perceptual for s in result.sets) else ""
    )
    lines.append(f"near-duplicate groups: {c['groups']:,} ({c['images_in_groups']:,} images){threshold}")
    for kind in KINDS:
        groups = c[kind]["groups"]
        lines.append(
            f"  {KIND_WORDS[kind]}: {groups:,} group{'s' * (groups != 1)} ({c[kind]['images']:,} images)"
        )
    for rank, group in enumerate(result.groups[:SHOWN], 1):
        lines.append(_group_line(result, group, rank))
    if len(result.groups) > SHOWN:
        lines.append(f"  ... and {len(result.groups) - SHOWN:,} more groups (--json FILE lists them all)")
    return lines


def _group_line(result: AuditResult, group: Group, rank: int) -> str:
    t = result.table
    shown = [
        f"{result.sets[int(t.sets[i])].name} {result.sets[int(t.sets[i])].splits[int(t.splits[i])]}/{t.key(i)[:12]}"
        for i in shown_members(result, group, SHOWN_MEMBERS)
    ]
    more = len(group.members) - len(shown)
    kinds = ", ".join(KIND_WORDS[k].split(" ")[0] for k in group_kinds(result, group))
    return (
        f"  #{rank} {len(group.members)} images, distance <= {group.max_distance} ({kinds}): "
        + ", ".join(shown)
        + (f" +{more} more" if more else "")
    )
