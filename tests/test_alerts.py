"""The alert rules in deploy/prometheus/alerts.yml: valid, unit-tested for every
alert by promtool (fires where it should, quiet before), each with a runbook."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support import need

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy/prometheus/alerts.yml"
RULE_TESTS = ROOT / "deploy/prometheus/alerts.test.yml"
OPERATIONS = ROOT / "docs/operations.md"


def alerts() -> list[dict]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    need(shutil.which("promtool") is not None, "needs promtool (apt-get install prometheus)")
    return subprocess.run(
        ["promtool", *args], cwd=RULES.parent, capture_output=True, text=True, timeout=120
    )


def test_it_passes_promtool_check_rules() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_it_passes_promtool_test_rules() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_tests_every_alert_firing_and_quiet() -> None:
    cases = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for rule in alerts():
        name = rule["alert"]
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name}: no test where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{name}: never tested quiet"


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_has_a_severity_a_summary_and_a_runbook_section(rule: dict) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    assert "{{ $labels." in rule["annotations"]["summary"]  # names the pool or the host
    anchor = rule["annotations"]["runbook"].split("#", 1)[1]
    headings = re.findall(r"^#+ (\S+)$", OPERATIONS.read_text(), re.M)
    assert anchor in {heading.lower() for heading in headings}, f"no section {rule['alert']}"
