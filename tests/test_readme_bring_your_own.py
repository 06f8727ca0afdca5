"""The README's "Bring your own" examples, run as written: the plugin section's validate command
and conformance snippet (the run itself is tests/orchestrator/test_plugin_spec.py, shrunk)."""

from __future__ import annotations

import shlex

import pytest

from demem.methods import METHODS
from tests.helpers import ROOT, readme_blocks

needs_plugin = pytest.mark.skipif("relaxloss_at" not in METHODS, reason="examples/plugin is not installed")


@needs_plugin
def test_the_plugin_sections_commands_and_snippet_run(capsys, monkeypatch):
    from orchestrator.cli import main

    monkeypatch.chdir(ROOT)
    (shell,) = readme_blocks("### Plugins", "bash")
    validate = next(line.split("#")[0] for line in shell.splitlines() if line.startswith("demem validate"))
    assert main(shlex.split(validate)[1:]) == 0
    out = capsys.readouterr().out
    assert "method.name relaxloss_at" in out and "plugin demem-example-plugin 0.1.0" in out
    (snippet,) = readme_blocks("### Plugins", "python")
    exec(compile(snippet, "README.md", "exec"), {})  # raises ConformanceError if a check fails
