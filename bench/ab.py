"""`bench ab`: the variant code of two git revisions, measured on this machine in one interleaved run,
and the gate on their difference (the rule of `asv continuous`: flag a row only when it is slower by
more than the threshold AND its 95% interval excludes "no change").
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from bench import stats
from bench.config import AcceptedSlowdown
from bench.schema import raw_key

DEFAULT_THRESHOLD = 0.10
WORKING_TREE = "working tree"


class RevisionError(ValueError):
    """A revision that cannot be measured; str() is one line."""


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RevisionError(f"git {' '.join(args)}: {e}") from None


def repo_root(folder: Path) -> Path:
    """The top of the git checkout holding `folder`; RevisionError when there is none."""
    out = _git(folder, "rev-parse", "--show-toplevel")
    if out.returncode != 0:
        raise RevisionError(f"{folder} is not inside a git checkout, so there are no revisions to compare")
    return Path(out.stdout.strip())


def side_plugins(plugins: Sequence[str], repo: Path, root: Path) -> tuple[str, ...]:
    """Plugins as one side of the comparison imports them: a .py file inside the checkout is taken from
    that side's revision (`root`), anything else as given."""
    out = []
    for plugin in plugins:
        path = Path(plugin)
        if path.is_absolute() and path.is_relative_to(repo):
            plugin = str(root / path.relative_to(repo))
        out.append(plugin)
    return tuple(out)


def resolve_revision(repo: Path, revision: str) -> str:
    """The commit a revision names; RevisionError when git does not know it (or this is no checkout)."""
    out = _git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    if out.returncode != 0:
        if _git(repo, "rev-parse", "--git-dir").returncode != 0:
            raise RevisionError(f"{repo} is not a git checkout, so there are no revisions to compare")
        raise RevisionError(f"unknown revision {revision!r}")
    return out.stdout.strip()


@contextlib.contextmanager
def checkout(repo: Path, commit: str) -> Iterator[Path]:
    """A detached worktree of `commit` in a temporary folder, removed afterwards."""
    parent = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    path = parent / commit[:12]
    out = _git(repo, "worktree", "add", "--detach", "--force", str(path), commit)
    if out.returncode != 0:
        shutil.rmtree(parent, ignore_errors=True)
        raise RevisionError(f"cannot check out {commit[:12]}: {out.stderr.strip().splitlines()[-1:]}")
    try:
        if not (path / "variants" / "__init__.py").exists():
            raise RevisionError(f"revision {commit[:12]} has no variants/ package to measure")
        yield path
    finally:
        _git(repo, "worktree", "remove", "--force", str(path))
        shutil.rmtree(parent, ignore_errors=True)


@dataclass(frozen=True)
class Change:
    variant: str
    framework: str
    mode: str
    batch: int
    base_ms: float
    head_ms: float
    ratio: stats.Interval  # head p50 / base p50
    verdict: str  # "slower" | "faster" | "no change" | "accepted" | "failed" | "new" | "removed"
    note: str = ""


def verdict(ratio: stats.Interval, threshold: float) -> str:
    """"slower" only when the change is past the threshold and the interval excludes no change."""
    if ratio.low is not None and ratio.estimate > 1 + threshold and ratio.low > 1:
        return "slower"
    if ratio.high is not None and ratio.estimate < 1 / (1 + threshold) and ratio.high < 1:
        return "faster"
    return "no change"


def compare(records: Sequence[Mapping[str, Any]], rounds: Mapping[str, Sequence[Sequence[float]]],
            threshold: float, accepted: Sequence[AcceptedSlowdown] = ()) -> list[Change]:
    """One Change per (variant, framework, mode, batch), from the records of both revisions ("base",
    "head") and their step times per round, keyed by `schema.raw_key`."""
    by_row: dict[tuple, dict[str, Mapping[str, Any]]] = {}
    for record in records:
        row = (record["variant"], record["framework"], record["mode"], record["batch"])
        by_row.setdefault(row, {})[record.get("revision")] = record
    changes = []
    for (variant, framework, mode, batch), sides in by_row.items():
        base, head = sides.get("base"), sides.get("head")
        row = dict(variant=variant, framework=framework, mode=mode, batch=batch)
        missing = [side for side, r in (("base", base), ("head", head))
                   if r and r.get("status") != "ok" and "UnknownVariantError" in str(r.get("error"))]
        if missing:  # a variant added (or removed) by the change: nothing to compare, nothing broken
            changes.append(Change(**row, base_ms=float("nan"), head_ms=float("nan"),
                                  ratio=stats.Interval(float("nan"), None, None),
                                  verdict="new" if missing == ["base"] else "removed",
                                  note=f"not registered in {' and '.join(missing)}"))
            continue
        if not base or not head or base.get("status") != "ok" or head.get("status") != "ok":
            failed = [s for s in (base, head) if not s or s.get("status") != "ok"]
            note = "; ".join(f"{(s or {}).get('revision', '?')}: {(s or {}).get('error')}" for s in failed)
            changes.append(Change(**row, base_ms=float("nan"), head_ms=float("nan"),
                                  ratio=stats.Interval(float("nan"), None, None), verdict="failed", note=note))
            continue
        ratio = stats.ratio_interval(rounds[raw_key(head)], rounds[raw_key(base)])
        result = verdict(ratio, threshold)
        note = ""
        if result == "slower":
            for accept in accepted:
                if accept.covers(variant, framework, batch):
                    result, note = "accepted", accept.reason
                    break
        changes.append(Change(**row, base_ms=base["latency_ms_p50"], head_ms=head["latency_ms_p50"],
                              ratio=ratio, verdict=result, note=note))
    return changes


def render(changes: Sequence[Change], base_label: str, head_label: str, threshold: float) -> str:
    lines = [f"bench ab: {head_label} vs {base_label}; flag = slower by > {threshold:.0%} with the 95% interval "
             f"above no change", ""]
    width = max((len(c.variant) for c in changes), default=8)
    for c in changes:
        where = f"{c.variant:<{width}}  {c.framework}/{c.mode:<7} b={c.batch:<4}"
        if c.verdict in ("failed", "new", "removed"):
            lines.append(f"{where}  {c.verdict.upper()}  {c.note}")
            continue
        change = c.ratio.estimate - 1
        interval = (f"[{c.ratio.low - 1:+.1%} .. {c.ratio.high - 1:+.1%}]" if c.ratio.low is not None
                    else "[too few rounds]")
        tail = f"  ({c.note})" if c.note else ""
        lines.append(f"{where}  {c.base_ms:9.3f} -> {c.head_ms:9.3f} ms  {change:+7.1%} {interval:<20} "
                     f"{c.verdict.upper() if c.verdict in ('slower', 'accepted') else c.verdict}{tail}")
    return "\n".join(lines)


def exit_code(changes: Sequence[Change]) -> int:
    """1 when a row is slower (and not accepted) or could not be measured on one side, else 0."""
    return int(any(c.verdict in ("slower", "failed") for c in changes))
