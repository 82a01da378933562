"""`segshards audit --sheet FILE.png`: the largest near-duplicate groups, one row each, as thumbnails
captioned with set, split and key, for a person to check at a glance.

Only the shards holding a drawn member are read again (the audit's pass keeps codes, never pixels)."""

from pathlib import Path

import cv2
import numpy as np

from segshards.writer.errors import OutputError, SegshardsError
from segshards.writer.format.images import decode_image
from segshards.writer.format.sample import Layout, image_member
from segshards.writer.format.tar_reader import iter_samples
from segshards.writer.share.audit import AuditResult, ShardTask, shown_members
from segshards.writer.share.audit_report import KIND_WORDS, group_kinds
from segshards.writer.storage.atomic import atomic_write
from segshards.writer.storage.urls import join_url, open_url

GROUPS = 8
MEMBERS = 6
THUMB = (160, 120)  # (W, H) of a thumbnail, letterboxed
CAPTION = 34  # pixels under each thumbnail
HEADER = 22
FONT = cv2.FONT_HERSHEY_SIMPLEX
GREY = (235, 235, 235)


def letterbox(image: np.ndarray) -> np.ndarray:
    """The image scaled to fit THUMB, centred on grey, as BGR."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    w, h = THUMB
    scale = min(w / image.shape[1], h / image.shape[0])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)
    out = np.full((h, w, 3), 200, np.uint8)
    y, x = (h - size[1]) // 2, (w - size[0]) // 2
    out[y : y + size[1], x : x + size[0]] = small
    return out


def wanted(result: AuditResult) -> dict[tuple[int, int, int], set[str]]:
    """(set, split, shard) -> keys to draw, for the members of the groups on the sheet."""
    t = result.table
    found: dict[tuple[int, int, int], set[str]] = {}
    for group in result.groups[:GROUPS]:
        for i in shown_members(result, group, MEMBERS):
            found.setdefault((int(t.sets[i]), int(t.splits[i]), int(t.shards[i])), set()).add(t.key(i))
    return found


def read_images(task: ShardTask, keys: set[str]) -> dict[str, np.ndarray]:
    """The decoded images of `keys` in one shard; a member that cannot be read is left out (drawn blank)."""
    where = join_url(task.location, task.name)
    images: dict[str, np.ndarray] = {}
    try:
        with open_url(where) as stream:
            for sample in iter_samples(stream, where, max_bytes=task.size):
                key = str(sample["__key__"])
                if key in keys:
                    ext = image_member(sample, Layout(task.image), f"{where}:{key}")
                    payload = sample[ext]
                    assert isinstance(payload, bytes)
                    images[key] = decode_image(payload, ext, f"{where}:{key}")
    except (OSError, SegshardsError):
        pass  # the audit counted this shard's problems already
    return images


def thumbnail(image: np.ndarray | None, caption: list[str]) -> np.ndarray:
    panel = np.full((THUMB[1] + CAPTION, THUMB[0], 3), 255, np.uint8)
    panel[: THUMB[1]] = letterbox(image) if image is not None else 200
    for row, text in enumerate(caption):
        cv2.putText(panel, text[:26], (3, THUMB[1] + 13 + 14 * row), FONT, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    return panel


def render(result: AuditResult) -> np.ndarray:
    """The sheet's pixels (BGR): a header line and a row of captioned thumbnails per group."""
    pixels: dict[tuple[int, str], np.ndarray] = {}
    for (si, split, shard), keys in wanted(result).items():
        audited = result.sets[si]
        task = audited.tasks[audited.splits[split]][shard]
        pixels.update(((si, k), image) for k, image in read_images(task, keys).items())
    t = result.table
    rows = []
    width = THUMB[0] * MEMBERS
    for rank, group in enumerate(result.groups[:GROUPS], 1):
        header = np.full((HEADER, width, 3), GREY, np.uint8)
        kinds = ", ".join(KIND_WORDS[k] for k in group_kinds(result, group))
        text = f"#{rank}: {len(group.members)} images, distance <= {group.max_distance}; {kinds}"
        cv2.putText(header, text, (4, 15), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        panels = []
        for i in shown_members(result, group, MEMBERS):
            audited = result.sets[int(t.sets[i])]
            caption = [f"{audited.name[-26:]}", f"{audited.splits[int(t.splits[i])]} {t.key(i)[:12]}"]
            panels.append(thumbnail(pixels.get((int(t.sets[i]), t.key(i))), caption))
        panels += [np.full_like(panels[0], 255)] * (MEMBERS - len(panels))
        rows += [header, np.hstack(panels)]
    if not rows:
        blank = np.full((HEADER * 2, width, 3), 255, np.uint8)
        cv2.putText(blank, "no near-duplicate groups found", (4, 28), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        rows = [blank]
    return np.vstack(rows)


def write_sheet(result: AuditResult, path: Path) -> int:
    """Write the sheet to `path` (.png; atomically); returns the groups drawn."""
    if path.suffix.lower() != ".png":
        raise OutputError(f"--sheet {path}: must name a .png file")
    ok, data = cv2.imencode(".png", render(result))
    if not ok:
        raise OutputError(f"--sheet {path}: cannot encode the sheet")
    try:
        atomic_write(path, data.tobytes())
    except OSError as exc:
        raise OutputError(f"--sheet {path}: cannot write ({exc.strerror or exc})") from None
    return min(len(result.groups), GROUPS)
