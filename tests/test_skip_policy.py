"""The CI skip policy of tests/conftest.py: under CI a skip fails the run, at import time as while running."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()
SKIP_AT_IMPORT = """
import pytest
pytest.importorskip("no_such_module_for_the_skip_policy")

def test_never_collected():
    pass
"""
SKIP_WHILE_RUNNING = """
import pytest

def test_skips():
    pytest.skip("a dependency is missing")

def test_passes():
    pass
"""


def _run(pytester, monkeypatch, ci: bool, **modules: str):
    """Run pytest in a fresh folder with this project's conftest and ``modules``, under CI or not."""
    pytester.makeconftest(CONFTEST.replace('pytest_plugins = ["pytester"]', ""))
    pytester.makepyfile(**modules)
    if ci:
        monkeypatch.setenv("CI", "1")
    else:
        monkeypatch.delenv("CI", raising=False)
    return pytester.runpytest_subprocess("-rs")


@pytest.mark.parametrize("ci", [True, False])
def test_a_module_skipped_at_import_fails_only_under_ci(pytester, monkeypatch, ci):
    result = _run(pytester, monkeypatch, ci, test_optional=SKIP_AT_IMPORT)
    if ci:
        assert result.ret != 0
        result.stdout.fnmatch_lines(["*skipped at import under CI*no_such_module_for_the_skip_policy*"])
    else:
        assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
        result.assert_outcomes(skipped=1)


@pytest.mark.parametrize("ci", [True, False])
def test_a_skip_while_running_fails_only_under_ci(pytester, monkeypatch, ci):
    result = _run(pytester, monkeypatch, ci, test_runtime=SKIP_WHILE_RUNNING)
    if ci:
        result.assert_outcomes(passed=1, failed=1)
    else:
        result.assert_outcomes(passed=1, skipped=1)
