"""What a run reports: metrics.json (one file per run, splits merged in as `train` and `eval` produce them,
written atomically), and the counts its console lines name."""

import json
from pathlib import Path
from typing import Any

from segshards.train.errors import OutputError
from segshards.writer.storage.atomic import atomic_write

METRICS = "metrics.json"


def read_metrics(out: Path) -> dict[str, Any]:
    """The run's metrics.json, or an empty report when there is none yet."""
    path = out / METRICS
    if not path.exists():
        return {"splits": {}}
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise OutputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        report = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OutputError(f"{path}: not valid JSON ({exc}); move it away to write a fresh one") from exc
    if not isinstance(report, dict) or not isinstance(report.get("splits"), dict):
        raise OutputError(f"{path}: not a metrics report (no 'splits' object)")
    return report


def update_metrics(out: Path, *, splits: dict[str, dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """Merge `splits` (replacing those splits) and top-level `fields` into metrics.json; returns the report."""
    report = read_metrics(out)
    report.update({k: v for k, v in fields.items() if v is not None})
    report["splits"].update(splits)
    atomic_write(out / METRICS, (json.dumps(report, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return report


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and `noun`, plural unless `n` is 1 ("1 step", "2 steps"); `n` with thousands separators."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {plural or noun + 's'}"
