"""The text of a helm failure as the deployer's user reads it."""

from __future__ import annotations

from activities.deploy import IMMUTABLE_JOB
from activities.helm import HelmError, hide_schema_values


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


def test_schema_values_hidden() -> None:
    """A string that the schema check quotes is replaced, escaped quotes
    included; paths, patterns, lengths and types stay."""
    stderr = (
        "- at '/image/repository': 'u:a\\'PW\"c\\\\d@h' does not match pattern "
        "'^[^\\\\s:@]+$'\n"
        "  - at '/secrets/existingSecret': maxLength: got 10, want 0\n"
        "- at '/config/url': 'https://u:PW@h x' is not valid uri: parse "
        '"https://u:PW@h x": invalid character " " in host name\n'
        "- at '/app/replicas': got string, want integer"
    )
    text = hide_schema_values(stderr)
    assert "PW" not in text
    assert "at '/image/repository': (value not shown) does not match pattern" in text
    assert "'^[^\\\\s:@]+$'" in text
    assert "at '/config/url': (value not shown) is not valid uri\n" in text
    assert "maxLength: got 10, want 0" in text
    assert "got string, want integer" in text


def test_schema_value_hidden_before_cut() -> None:
    """A long schema error is cut in the middle, and a rejected value that the
    cut would leave unclosed is hidden first."""
    unknown = "".join(
        f"- at '': additional properties 'legacy{n}' not allowed\n" for n in range(8)
    )
    secret = "user:Sup3rS3cretPassw0rd@registry.example.com/" + "x" * 300
    rejected = f"- at '/image/repository': '{secret}' does not match pattern '^x$'\n"
    tail = "".join(f"- at '/app/x{n}': got string, want integer\n" for n in range(60))
    error = HelmError("template ventros-crm", 1, unknown + rejected + tail)
    assert "characters cut" in error.stderr
    assert "Sup3rS3cret" not in error.stderr
    assert "Sup3rS3cret" not in str(error)


def test_api_server_value_hidden() -> None:
    """A value that the API server quotes in an error that helm passes on is
    hidden, and the field and the reason stay."""
    stderr = (
        'Error: UPGRADE FAILED: failed to create resource: Service "crm-frontend" '
        'is invalid: spec.type: Unsupported value: "SEKRET": supported values: '
        '"ClusterIP", "NodePort"'
    )
    error = HelmError("upgrade crm-temporal", 1, stderr)
    assert "SEKRET" not in str(error)
    assert (
        'spec.type: Unsupported value: (value not shown): supported values: "Clu'
        in (error.stderr)
    )


def test_immutable_job_error_readable() -> None:
    """helm v4 logs the API server's error escaped in a logfmt value, then
    prints it in its Error line. In both, the rejected pod template is hidden
    while the Job's name and "field is immutable" stay, which the temporal
    phase looks for to replace the Job."""
    template = (
        'core.PodTemplateSpec{ObjectMeta:v1.ObjectMeta{Name:"", '
        'Labels:map[string]string{"a":"SEKRET"}}}'
    )
    api = (
        "server-side apply failed for object t/x batch/v1, Kind=Job: Job.batch "
        f'"crm-schema" is invalid: spec.template: Invalid value: {template}: '
        "field is immutable"
    )
    escaped = api.replace('"', '\\"')
    stderr = (
        f'level=WARN msg="upgrade failed" name=crm error="{escaped}"\n'
        f"Error: UPGRADE FAILED: {api}"
    )
    error = HelmError("upgrade crm", 1, stderr)
    assert "SEKRET" not in error.stderr
    shown = (
        'Job.batch "crm-schema" is invalid: spec.template: Invalid value: '
        "(value not shown): field is immutable"
    )
    assert error.stderr.count(shown) == 2
    assert IMMUTABLE_JOB.search(error.stderr) is not None
