"""Hostile and broken spec files: every one is refused by `demem validate` with a message naming the
problem, exit code 2, no traceback, and bounded memory (a hang guard, not a speed target). Together
with the BAD table of test_spec.py (one malformed setting per case) this is the spec catalogue."""

from __future__ import annotations

import signal
import tracemalloc
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main

pytestmark = pytest.mark.usefixtures("isolated_data_env")

GOOD = """\
name: t
base:
  data: {dataset: fashion-mnist, pool_size: 64}
  train: {epochs: 1}
audit: {models: 4, attacks: [loss]}
"""


def _laughs(levels: int = 9, width: int = 9) -> str:
    lines = ['a0: &a0 "lol"']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + f"\nname: *a{levels - 1}\n"


def _with(**top) -> str:
    raw = yaml.safe_load(GOOD)
    raw.update(top)
    return yaml.safe_dump(raw)


def _base(**settings) -> str:
    raw = yaml.safe_load(GOOD)
    for path, value in settings.items():
        section, key = path.split("__")
        raw["base"].setdefault(section, {})[key] = value
    return yaml.safe_dump(raw)


# (case id, file content (str or bytes), a fragment every report must contain)
CASES = [
    ("binary", b"\x00\x01\x02name: t\n" * 10, "a binary file"),
    ("latin-1", "name: caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 9)"),
    ("utf-16", GOOD.encode("utf-16"), "binary file"),
    ("self-alias", "a: &a [*a]\n", "YAML aliases are not allowed"),
    ("billion-laughs", _laughs(), "YAML aliases are not allowed"),
    ("merge-key", "b: &b {epochs: 1}\nbase: {train: {<<: *b}}\n", "YAML aliases are not allowed"),
    ("deep-brackets", "name: " + "[" * 10_000 + "]" * 10_000 + "\n", "nested more than 32 levels"),
    ("deep-unclosed", "name: " + "[" * 10_000 + "\n", "nested more than 32 levels"),
    ("deep-braces", "a: " + "{b: " * 5_000 + "1" + "}" * 5_000 + "\n", "nested more than 32 levels"),
    ("deep-block", "".join(" " * i + f"k{i}:\n" for i in range(200)), "nested more than 32 levels"),
    ("huge-list", "name: [" + "1, " * 3_000_000 + "1]\n", "larger than 256 KiB"),
    ("huge-string", "name: " + "x" * 300_000 + "\n", "larger than 256 KiB"),
    ("many-values", "a: [" + ",".join(["1"] * 60_000) + "]\n", "more than 20000 values"),
    ("many-lines", "a:\n" + "".join(f"- {i}\n" for i in range(25_000)), "more than 20000 values"),
    ("dup-top", GOOD + "name: u\n", "key 'name' is given twice"),
    ("dup-nested", GOOD.replace("epochs: 1}", "epochs: 1, epochs: 2}"), "key 'epochs' is given twice"),
    ("list-key", "? [a, b]\n: 1\n", "a mapping key must be a plain value"),
    ("python-tag", "name: !!python/object/apply:os.system ['touch /tmp/demem-pwned']\n", "YAML syntax error"),
    ("custom-tag", "name: !secret x\n", "YAML syntax error"),
    ("tab-indent", "name: t\nbase:\n\tdata: 1\n", "YAML syntax error"),
    ("unclosed-quote", 'name: "t\n', "YAML syntax error"),
    ("two-documents", GOOD + "---\nname: u\n", "YAML syntax error"),
    ("empty", "", "the spec is empty"),
    ("only-comment", "# nothing\n", "the spec is empty"),
    ("top-list", "- name: t\n", "spec: must be a mapping of settings, got list"),
    ("top-scalar", "quickstart\n", "spec: must be a mapping of settings, got str"),
    ("top-int", "12\n", "spec: must be a mapping of settings, got int"),
    ("models-million", _with(audit={"models": 1_000_000, "attacks": ["loss"]}), "audit.models: at most 1024"),
    ("models-googol", _with(audit={"models": 10**100, "attacks": ["loss"]}), "audit.models: at most 1024"),
    ("models-float", _with(audit={"models": 1e6, "attacks": ["loss"]}), "audit.models: must be an integer >= 2"),
    ("pool-billion", _base(data__pool_size=1_000_000_000), "data.pool_size must be at most 70000"),
    ("pool-1e9-text", _base(data__pool_size="1e9"), "data.pool_size"),
    ("pool-float", _base(data__pool_size=1e9), "data.pool_size"),
    ("pool-negative", _base(data__pool_size=-5), "data.pool_size"),
    ("lr-inf", _base(train__lr=float("inf")), "train.lr"),
    ("lr-nan", _base(train__lr=float("nan")), "train.lr"),
    ("wd-nan", _base(train__weight_decay=float("nan")), "train.weight_decay"),
    ("eps-inf", _base(attack__eps=float("inf")), "attack.eps"),
    ("lambda-inf", _base(demem__lambda=float("inf")), "demem.lambda"),
    ("epochs-huge", _base(train__epochs=10**12), "train.epochs"),
    (
        "grid-too-big",
        _with(grid={"lambda": [i / 100 for i in range(100)], "threshold": [i / 100 for i in range(20)]}),
        "grid: 2000 groups; at most 1000",
    ),
    ("seeds-too-many", _with(seeds=list(range(101))), "seeds: 101 seeds; at most 100"),
    (
        "trials-too-many",
        _with(seeds=list(range(100)), grid={"lambda": [i / 10 for i in range(10)]}, audit={"models": 1024}),
        "trials (groups x seeds x audit.models); at most 100000",
    ),
    ("name-dotdot", _with(name=".."), "name: must be one path component"),
    ("name-escape", _with(name="../../etc"), "name: must be one path component"),
    ("name-absolute", _with(name="/tmp/x"), "name: must be one path component"),
    ("name-long-value", _with(name="x" * 5000), "name: must be one path component"),
    ("root-not-dir", _base(data__root="/nonexistent/demem-data"), "data.dataset: fashion-mnist is not present"),
    ("many-unknown", _with(**{f"k{i}": i for i in range(300)}), "... and 200 more problems"),
    ("int-5000-digits", GOOD + "max_concurrent: " + "9" * 5000 + "\n", "an integer written with 5000 characters"),
    ("int-hex-huge", GOOD + "max_concurrent: 0x" + "f" * 50_000 + "\n", "an integer written with 50002 characters"),
    ("key-int-5000-digits", GOOD + "? " + "9" * 5000 + "\n: 1\n", "an integer written with 5000 characters"),
    ("bad-date", GOOD.replace("name: t", "name: 2001-13-45"), "cannot read this value: month must be in 1..12"),
    ("underscore-top", GOOD + "_test_fail: 5\n", "_test_fail: unknown key; allowed: audit, base,"),
    ("underscore-audit", GOOD.replace("attacks: [loss]}", "attacks: [loss], _x: 1}"), "audit._x: unknown key"),
    ("huge-value-in-message", _base(method__name="m" * 100_000), "more characters)"),
]


@pytest.mark.parametrize("content, fragment", [pytest.param(c, f, id=i) for i, c, f in CASES])
def test_hostile_spec_is_refused_cleanly(content, fragment, tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    marker = Path("/tmp/demem-pwned")
    marker.unlink(missing_ok=True)

    def hang(*_):
        raise TimeoutError("validate did not return within 60 s")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(60)
    tracemalloc.start()
    try:
        rc = main(["validate", str(path)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert fragment in err, err
    assert "Traceback" not in err
    assert len(err) < 120_000  # every message is cut; a hostile value is never printed whole
    assert peak < 200 * 2**20, f"validate held {peak / 2**20:.0f} MiB"
    assert not marker.exists()  # the tag ran nothing


def test_a_good_spec_still_passes(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(GOOD)
    assert main(["validate", str(path), "--no-data-check"]) == 0


def test_catalogue_size():
    from .test_spec import BAD

    assert len(CASES) + len(BAD) >= 100
