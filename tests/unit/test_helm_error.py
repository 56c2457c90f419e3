"""The text of a helm failure as the deployer's user reads it."""

from __future__ import annotations

from activities.helm import HelmError


def test_debug_hint_left_out() -> None:
    """helm template's hint names --debug, which no deployer command takes."""
    stderr = (
        "Error: YAML parse error on chart/templates/app.yaml: bad indentation\n\n"
        "Use --debug flag to render out invalid YAML\n"
    )
    error = HelmError("template ventros-crm", 1, stderr)
    assert "--debug" not in str(error)
    assert "bad indentation" in str(error)
    assert error.stderr.endswith("bad indentation")
