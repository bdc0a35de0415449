"""bench ab: the gate's rule on synthetic rounds, and two real commits of a repository in a temp folder
measured in one interleaved run (one of them makes a variant's step slower)."""

from __future__ import annotations

import shutil
import uuid
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bench import ab
from bench.cli import app
from bench.config import AcceptedSlowdown
from bench.schema import raw_key
from bench.stats import Interval

REPO = Path(__file__).resolve().parent.parent
cli = CliRunner()


# ---- the rule, on synthetic rounds ---------------------------------------------------------------


def rounds(p50_s: float, n_rounds: int = 12, steps: int = 3, sigma: float = 0.03, drift=None, seed: int = 0):
    rng = np.random.default_rng(seed)
    drift = np.ones(n_rounds) if drift is None else drift
    return (p50_s * drift[:, None] * rng.lognormal(0, sigma, (n_rounds, steps))).tolist()


def side_records(variant: str, base_s: float, head_s: float, **kw):
    records, times = [], {}
    for revision, p50, seed in (("base", base_s, 1), ("head", head_s, 2)):
        record = {"variant": variant, "framework": "jax", "mode": "jit", "device": "cpu", "batch": 1,
                  "revision": revision, "status": "ok", "latency_ms_p50": p50 * 1e3}
        records.append(record)
        times[raw_key(record)] = rounds(p50, seed=seed, **kw)
    return records, times


def test_verdict_needs_both_the_threshold_and_an_interval_excluding_no_change():
    assert ab.verdict(Interval(1.20, 1.12, 1.28), 0.10) == "slower"
    assert ab.verdict(Interval(1.20, 0.97, 1.40), 0.10) == "no change"  # too unsure
    assert ab.verdict(Interval(1.05, 1.02, 1.08), 0.10) == "no change"  # sure, but small
    assert ab.verdict(Interval(0.80, 0.75, 0.86), 0.10) == "faster"
    assert ab.verdict(Interval(1.20, None, None), 0.10) == "no change"  # too few rounds to tell


def test_compare_flags_the_slower_variant_only_and_pairs_rounds_against_drift():
    drift = 1 + 0.5 * np.random.default_rng(7).random(12)  # the machine wanders by up to 50% between rounds
    same, same_t = side_records("a", 0.010, 0.010, drift=drift)
    slow, slow_t = side_records("b", 0.010, 0.012, drift=drift)
    changes = {c.variant: c for c in ab.compare(same + slow, {**same_t, **slow_t}, threshold=0.10)}
    assert changes["a"].verdict == "no change" and changes["a"].ratio.low < 1 < changes["a"].ratio.high
    assert changes["b"].verdict == "slower" and changes["b"].ratio.low > 1.10
    assert ab.exit_code(list(changes.values())) == 1


def test_an_accepted_slowdown_is_reported_as_accepted_not_as_a_pass():
    slow, times = side_records("b", 0.010, 0.013)
    accept = [AcceptedSlowdown("b", "wider FFN, agreed in review")]
    (change,) = ab.compare(slow, times, 0.10, accept)
    assert change.verdict == "accepted" and change.note == "wider FFN, agreed in review"
    assert ab.exit_code([change]) == 0
    assert "ACCEPTED" in ab.render([change], "base", "head", 0.10)
    other = [AcceptedSlowdown("b", "only torch", framework="torch")]
    assert ab.compare(slow, times, 0.10, other)[0].verdict == "slower"


def test_a_variant_new_in_head_is_not_a_failure_but_a_broken_one_is():
    records, times = side_records("c", 0.010, 0.010)
    records[0].update(status="failed", error="UnknownVariantError: unknown variant 'c'")
    (change,) = ab.compare(records, times, 0.10)
    assert change.verdict == "new" and ab.exit_code([change]) == 0
    records[0].update(error="FloatingPointError: NaN")
    (change,) = ab.compare(records, times, 0.10)
    assert change.verdict == "failed" and ab.exit_code([change]) == 1


# ---- two real commits ----------------------------------------------------------------------------

PLUGIN = '''
from variants import EncoderSpec, register

TINY = EncoderSpec(input_dim=12, model_dim=64, num_heads=4, ffn_dim=128, conv_kernel=4, num_blocks=2,
                   conv_only_blocks=1, left_context=5)


@register("unchanged between the commits")
def ab_same() -> EncoderSpec:
    return TINY


@register("made slower by the second commit")
def ab_changed() -> EncoderSpec:
    return TINY.replace(ffn_dim=FFN)
'''

CONFIG = """
[measure.quick]
rounds = 12
steps_per_round = 3
round_warmup = 1
warmup_iterations = 3
timeout_s = 120
"""


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True,
                         env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                              "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})
    return out.stdout.strip()


@pytest.fixture(scope="module")
def two_commits(tmp_path_factory) -> Path:
    """A repository holding this checkout's variants/ and a plugin; the second commit makes the FFN
    of `ab_changed` 16x wider, a step several times slower."""
    repo = tmp_path_factory.mktemp("abrepo")
    shutil.copytree(REPO / "variants", repo / "variants", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "bench.toml").write_text(CONFIG)
    (repo / "my_variants.py").write_text(PLUGIN.replace("FFN", "128"))
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "first")
    (repo / "my_variants.py").write_text(PLUGIN.replace("FFN", "2048"))
    git(repo, "commit", "-qam", "wider FFN")
    return repo


def run_ab(repo: Path, monkeypatch, *args: str):
    monkeypatch.chdir(repo)
    return cli.invoke(app, ["ab", *args, "--plugin", "my_variants.py", "--variant", "ab_same,ab_changed",
                            "--framework", "jax", "--batch", "1", "--quick", "--no-progress",
                            "--out", str(repo / "runs" / uuid.uuid4().hex)])


def test_ab_flags_the_variant_a_commit_slowed_and_not_the_other(two_commits, monkeypatch):
    result = run_ab(two_commits, monkeypatch, "HEAD~1", "HEAD")
    assert result.exit_code == 1, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("ab_")}
    assert "SLOWER" in lines["ab_changed"], result.stdout
    assert "SLOWER" not in lines["ab_same"] and "no change" in lines["ab_same"], result.stdout
    assert "ab_changed" in result.stderr and "bench: error:" in result.stderr


def test_ab_of_a_commit_against_itself_flags_nothing(two_commits, monkeypatch):
    result = run_ab(two_commits, monkeypatch, "HEAD")  # HEAD against the (clean) working tree
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("ab_")]
    assert len(rows) == 2 and all(row.endswith("no change") for row in rows), result.stdout


def test_ab_with_the_slowdown_accepted_exits_0_and_says_accepted(two_commits, monkeypatch):
    config = two_commits / "accept.toml"
    config.write_text(CONFIG + '\n[[ab.accept]]\nvariant = "ab_changed"\nreason = "on purpose"\n')
    result = run_ab(two_commits, monkeypatch, "HEAD~1", "HEAD", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert "ACCEPTED" in result.stdout and "on purpose" in result.stdout


@pytest.mark.parametrize("args, message", [(["no-such-rev"], "unknown revision 'no-such-rev'"),
                                           (["HEAD", "--threshold", "-1"], "--threshold")])
def test_bad_input_is_one_line_and_exit_2(two_commits, monkeypatch, args, message):
    monkeypatch.chdir(two_commits)
    result = cli.invoke(app, ["ab", *args])
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_outside_a_git_checkout_is_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli.invoke(app, ["ab", "HEAD"])
    assert result.exit_code == 2 and "not inside a git checkout" in result.stderr
