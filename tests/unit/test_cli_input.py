"""The ventros-deploy command line's checks of its own input: --set values,
--request files, timeouts and the key ring. Each runs before the client
connects, so these tests need no Temporal server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from client.cli import build_parser, build_request, parse_set
from deployer import codec
from tests.conftest import REPO_ROOT

# Nothing listens on port 9 (discard), so a test that got past its check
# would exit 5, not 2.
UNREACHABLE = "127.0.0.1:9"


def run_client(args: list[str], **variables: str) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("VENTROS_DEPLOY_")
    }
    env.update(VENTROS_DEPLOY_TEMPORAL_ADDRESS=UNREACHABLE, **variables)
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
    )


@pytest.mark.parametrize(
    "raw",
    [
        "PWHASH-9917 #tail",
        "00123456",
        "0o17",
        "0x1F",
        "+5",
        "1_000",
        "1.50",
        "yes",
        "off",
        "~",
        " padded",
        "padded ",
        "2024-01-01",
        ".inf",
        "[007, 1]",
        "&Amp3r-PW s3cond-half",
        "*star",
        "!bang tail",
        "!!str 123",
        "[&a x, *a]",
        "{k: !t v}",
        "&SEKRET13 [",
        "user: pw",
        "- pw",
        "|",
        ">-",
        "-----BEGIN KEY-----\nb3Bl\n-----END KEY-----",
        "pw\rx",
        "pw\r\nx",
        "a\x85b",
        "=",
        "<<",
        "@pw",
        "`pw",
        "%pw",
        '"unclosed',
        "a: b: c",
    ],
)
def test_set_keeps_changed_text(raw: str) -> None:
    """A value whose YAML reading would change its text stays that text."""
    assert parse_set([f"secrets.redisPassword={raw}"]) == {
        "secrets": {"redisPassword": raw}
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("3", 3),
        ("-3", -3),
        ("1.5", 1.5),
        ("true", True),
        ("False", False),
        ("null", None),
        ("debug", "debug"),
        ("a#b", "a#b"),
        ('"00123"', "00123"),
        ("[1, 2]", [1, 2]),
        ("{a: 1}", {"a": 1}),
        ("", ""),
    ],
)
def test_set_reads_yaml(raw: str, expected: Any) -> None:
    """A value that YAML reads as it is written gets YAML's type."""
    assert parse_set([f"key={raw}"]) == {"key": expected}


def test_set_string_keeps_text() -> None:
    """--set-string stores strings and overrides --set for the same key."""
    args = build_parser().parse_args(
        [
            "start",
            "--set",
            "secrets.redisPassword=123456",
            "--set",
            "app.replicas=3",
            "--set-string",
            "secrets.redisPassword=123456",
            "--set-string",
            "config.flag=true",
        ]
    )
    values = build_request(args)["values"]
    assert values["secrets"] == {"redisPassword": "123456"}
    assert values["config"] == {"flag": "true"}
    assert values["app"] == {"replicas": 3}


def test_set_string_without_equals_exit_2() -> None:
    """A --set-string without '=' names the option and the expected form."""
    result = run_client(["start", "--set-string", "secrets.redisPassword"])
    assert result.returncode == 2, result.stderr
    assert "invalid --set-string without '='" in result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("null", "must contain a JSON object of deploy request fields, got null"),
        ("[1, 2]", "must contain a JSON object of deploy request fields, got an"),
        ('"str"', "must contain a JSON object of deploy request fields, got a str"),
        ("42", "must contain a JSON object of deploy request fields, got a number"),
        ('{"values": [1]}', "field values must be a JSON object of chart values"),
        ('{"values": "x"}', "field values must be a JSON object of chart values"),
    ],
)
def test_request_not_object_exit_2(tmp_path: Path, content: str, expected: str) -> None:
    """A --request file of the wrong shape exits 2 naming the file and field."""
    path = tmp_path / "request.json"
    path.write_text(content)
    result = run_client(["start", "--request", str(path)])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"invalid --request {path}: " in result.stderr
    assert expected in result.stderr
    assert "for example" in result.stderr


@pytest.mark.parametrize("option", ["--request", "--values"])
def test_deep_file_exit_2(tmp_path: Path, option: str) -> None:
    """A --request or --values file nested past the decoder's recursion limit
    exits 2 naming the file, without a traceback."""
    depth = 5000
    path = tmp_path / "deep.json"
    path.write_text('{"values": ' + '{"a": ' * depth + "{}" + "}" * depth + "}")
    result = run_client(["start", option, str(path)])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot read {option} {path}: " in result.stderr
    assert "nests too deep to decode" in result.stderr


def alias_bomb(levels: int) -> str:
    """Return a small YAML text whose aliases expand to 9**levels items."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels):
        refs = ", ".join([f"*l{level - 1}"] * 9)
        lines.append(f"l{level}: &l{level} [{refs}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_values_exit_2(tmp_path: Path) -> None:
    """A --values file whose YAML aliases expand far past the size limit exits
    2 before the client connects. The size check stops walking once the
    limit is passed, instead of writing all the expanded JSON first."""
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(12))
    result = run_client(["start", "--values", str(path)])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "values: is at least 26" in result.stderr
    assert "bytes of JSON; the limit is 262144" in result.stderr


def test_values_not_utf8_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b'secrets:\n  redisPassword: "caf\xe9"\n')
    result = run_client(["start", "--values", str(path)])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert (
        f"cannot read --values {path}: byte 30 is not UTF-8; save the file as "
        "UTF-8 text" in result.stderr
    )


@pytest.mark.parametrize(
    ("args", "option", "limits"),
    [
        (["rollback", "--timeout", "0"], "--timeout", "10 to 3600 seconds"),
        (["destroy", "--drain-timeout", "0"], "--drain-timeout", "10 to 86400"),
        (["destroy", "--namespace-timeout", "0"], "--namespace-timeout", "10 to 3600"),
    ],
)
def test_zero_timeout_exit_2(args: list[str], option: str, limits: str) -> None:
    """A timeout of 0 is rejected with its range, not replaced by a default."""
    result = run_client([*args, "--release", "r", "--namespace", "n"])
    assert result.returncode == 2, result.stderr
    assert f"argument {option}: must be {limits}" in result.stderr
    assert "got 0" in result.stderr


def test_timeout_in_range_accepted() -> None:
    """The lowest allowed timeout reaches the request as given."""
    args = build_parser().parse_args(["rollback", "--timeout", "10"])
    assert args.timeout == 10


def test_missing_key_ring_file_exit_2(tmp_path: Path) -> None:
    """A key ring file that does not exist is one line of error, exit 2."""
    missing = tmp_path / "nowhere.json"
    result = run_client(
        ["status", "deploy-x-y"], VENTROS_DEPLOY_CODEC_KEYS_FILE=str(missing)
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert f"file not found: {missing}" in result.stderr
    assert "VENTROS_DEPLOY_CODEC_KEYS_FILE" in result.stderr


def test_open_key_ring_file_exit_2(tmp_path: Path) -> None:
    """A key ring file that others may read is rejected with the chmod fix."""
    path = tmp_path / "keys.json"
    codec.generate_key_ring_file(str(path))
    path.chmod(0o644)
    result = run_client(
        ["status", "deploy-x-y"], VENTROS_DEPLOY_CODEC_KEYS_FILE=str(path)
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "has mode 0644" in result.stderr
    assert f"chmod 600 {path}" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["start"],
        ["rollback", "--release", "r", "--namespace", "n"],
        ["destroy", "--release", "r", "--namespace", "n"],
    ],
)
def test_start_without_key_ring_exit_2(args: list[str]) -> None:
    """Commands that start a workflow exit 2 without a key ring."""
    result = run_client(args)
    assert result.returncode == 2, result.stderr
    assert "no payload key ring is configured" in result.stderr
    assert "VENTROS_DEPLOY_CODEC_KEYS_FILE" in result.stderr


def test_start_with_key_ring_connects(tmp_path: Path) -> None:
    """With a key ring, start passes the check and goes on to connect."""
    path = tmp_path / "keys.json"
    codec.generate_key_ring_file(str(path))
    result = run_client(["start"], VENTROS_DEPLOY_CODEC_KEYS_FILE=str(path))
    assert result.returncode == 5, result.stderr
    assert UNREACHABLE in result.stderr


def test_request_file_values_merge(tmp_path: Path) -> None:
    """A request file's values object is kept and merged with --set."""
    path = tmp_path / "request.json"
    path.write_text(json.dumps({"values": {"app": {"replicas": 2, "x": 1}}}))
    args = build_parser().parse_args(
        ["start", "--request", str(path), "--set", "app.replicas=3"]
    )
    assert build_request(args)["values"] == {"app": {"replicas": 3, "x": 1}}


@pytest.mark.parametrize(
    ("raw", "secret", "problem"),
    [
        ("*SEKRET11", "SEKRET11", "found undefined alias"),
        ("!SEKRET12 x", "SEKRET12", "could not determine a constructor for the tag"),
        ("&SEKRET13 [", "SEKRET13", "expected"),
        ("!!int s3cr3tPW14", "s3cr3tPW14", "a YAML tag could not build its value"),
        ("!!timestamp 2020-99-s3cr3t15", "s3cr3t15", "a YAML tag could not build"),
    ],
)
def test_yaml_errors_hide_the_value(
    tmp_path: Path, raw: str, secret: str, problem: str
) -> None:
    """A --values file that YAML cannot read is named by key and problem,
    never by its text. A password may start with '*', '&' or '!', and a tag's
    constructor puts the text in its own error. --set keeps such values as
    typed (test_set_keeps_changed_text)."""
    path = tmp_path / "values.yaml"
    path.write_text(f"secrets:\n  appSecretKey: {raw}\n")
    result = run_client(["start", "--values", str(path)])
    assert result.returncode == 2, result.stderr
    assert problem in result.stderr
    assert "Traceback" not in result.stderr
    assert secret not in result.stdout + result.stderr


@pytest.mark.parametrize("raw", ["[SEKRET16, x", "{SEKRET17: [}", "[SEKRET18]x"])
def test_set_yaml_errors_hide_the_value(raw: str) -> None:
    """A --set value that YAML cannot read is named by key and problem, never
    by its text."""
    result = run_client(["start", "--set", f"secrets.appSecretKey={raw}"])
    assert result.returncode == 2, result.stderr
    assert "invalid --set secrets.appSecretKey" in result.stderr
    assert "Traceback" not in result.stderr
    assert "SEKRET" not in result.stdout + result.stderr


def test_yaml_errors_keep_punctuation() -> None:
    """Quoted punctuation in a YAML error stays, so the message still names
    the expected character."""
    result = run_client(["start", "--set", "app.list=[a, b c: d"])
    assert result.returncode == 2, result.stderr
    assert "(text not shown)" not in result.stderr
    assert "expected ','" in result.stderr or "expected ']'" in result.stderr


def test_delete_namespace_without_data_exit_2() -> None:
    """destroy --delete-namespace without --delete-data names both flags
    before it connects or needs a key ring."""
    result = run_client(
        ["destroy", "--release", "r", "--namespace", "n", "--delete-namespace"]
    )
    assert result.returncode == 2, result.stderr
    assert "add --delete-data, or leave out --delete-namespace" in result.stderr


@pytest.mark.parametrize("data", [["--delete-data"], []])
def test_delete_cluster_namespace_exit_2(data: list[str]) -> None:
    """destroy --delete-namespace of the default namespace exits 2 before it
    connects: the API server would refuse it after the release was gone.
    Without --delete-data too, the error names this, not the missing flag."""
    result = run_client(
        [
            "destroy",
            "--release",
            "r",
            "--namespace",
            "default",
            *data,
            "--delete-namespace",
        ]
    )
    assert result.returncode == 2, result.stderr
    assert "would delete namespace 'default'" in result.stderr
    assert "leave out --delete-namespace" in result.stderr


def test_start_in_kube_system_exit_2() -> None:
    """start --namespace kube-system exits 2 naming the namespace."""
    result = run_client(["start", "--namespace", "kube-system"])
    assert result.returncode == 2, result.stderr
    assert "starts with 'kube-'" in result.stderr
    assert '(got "kube-system")' in result.stderr


@pytest.mark.parametrize(
    ("content", "key", "lines"),
    [
        ("app:\n  replicas: 2\nredis: {}\napp:\n  image: {tag: x}\n", "app", (1, 4)),
        ("app:\n  replicas: 2\n  image: {}\n  replicas: 3\n", "replicas", (2, 4)),
    ],
)
def test_values_duplicate_key_exit_2(
    tmp_path: Path, content: str, key: str, lines: tuple[int, int]
) -> None:
    """A --values file that gives a key twice in one mapping exits 2 naming
    the key and both lines: YAML would drop the first silently."""
    path = tmp_path / "values.yaml"
    path.write_text(content)
    result = run_client(["start", "--values", str(path)])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"invalid --values {path}: key {key} is given twice" in result.stderr
    assert f"at lines {lines[0]} and {lines[1]}" in result.stderr
    assert "merge the two or remove one" in result.stderr


def test_values_merge_key_override(tmp_path: Path) -> None:
    """A key that overrides one brought in by a merge key (<<) is no duplicate."""
    path = tmp_path / "values.yaml"
    path.write_text(
        "common: &c\n  replicas: 2\n  x: 1\napp:\n  <<: *c\n  replicas: 3\n"
    )
    args = build_parser().parse_args(["start", "--values", str(path)])
    assert build_request(args)["values"]["app"] == {"replicas": 3, "x": 1}


def test_request_duplicate_key_exit_2(tmp_path: Path) -> None:
    """A --request file that gives a key twice in one object exits 2."""
    path = tmp_path / "request.json"
    path.write_text('{"values": {"app": {"replicas": 2}}, "values": {}}')
    result = run_client(["start", "--request", str(path)])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f'cannot read --request {path}: key "values" is given twice' in (
        result.stderr
    )


def test_set_duplicate_key_exit_2() -> None:
    """A --set flow mapping that gives a key twice exits 2 naming the key."""
    result = run_client(["start", "--set", "app={replicas: 2, replicas: 3}"])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "invalid --set app: key replicas is given twice in the map" in (
        result.stderr
    )
    assert "--set-string" not in result.stderr


def test_values_layered_merge_keys(tmp_path: Path) -> None:
    """An anchored map that overrides a merged key, merged again later, is no
    duplicate: PyYAML adds merged keys to a mapping's node once it builds it."""
    path = tmp_path / "values.yaml"
    path.write_text(
        "defaults:\n"
        "  common: &common {cpu: 100m, memory: 64Mi}\n"
        "  redis:\n"
        "    resources: &redisres\n"
        "      <<: *common\n"
        "      memory: 1Gi\n"
        "redis:\n"
        "  resources:\n"
        "    <<: *redisres\n"
    )
    args = build_parser().parse_args(["start", "--values", str(path)])
    resources = build_request(args)["values"]["redis"]["resources"]
    assert resources == {"cpu": "100m", "memory": "1Gi"}


@pytest.mark.parametrize("option", ["--request", "--values"])
def test_endless_file_exit_2(option: str) -> None:
    """A --request or --values path that never ends, such as /dev/zero, exits
    2 after reading the size limit, instead of filling the memory."""
    result = run_client(["start", option, "/dev/zero"])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot read {option} /dev/zero: it is larger than 1024 KiB" in (
        result.stderr
    )


def test_set_deep_nesting_exit_2() -> None:
    """A --set value nested past the decoder's recursion limit exits 2 naming
    the key, without a traceback."""
    result = run_client(["start", "--set", "app.a=" + "[" * 500 + "]" * 500])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "invalid --set app.a: it nests too deep to decode" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--app-version", "1.2.0", "--set", "image.tag=Pa55w0rd/InTag"],
        ["--app-version", "1.2.0", "--set-string", "image.tag=1.3.0"],
    ],
)
def test_two_image_tags_exit_2(args: list[str]) -> None:
    """--app-version and an image.tag value that differ exit 2 without the
    value. Before, the deployer used --app-version and dropped the value."""
    result = run_client(["start", *args])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "app_version and values.image.tag set different image tags" in (
        result.stderr
    )
    assert "InTag" not in result.stderr
    assert "1.3.0" not in result.stderr


def test_same_image_tag_twice_accepted(tmp_path: Path) -> None:
    """The same tag through both passes the check, and the client goes on to
    connect (exit 5: nothing listens)."""
    path = tmp_path / "keys.json"
    codec.generate_key_ring_file(str(path))
    result = run_client(
        ["start", "--app-version", "1.2.0", "--set", "image.tag=1.2.0"],
        VENTROS_DEPLOY_CODEC_KEYS_FILE=str(path),
    )
    assert result.returncode == 5, result.stderr
    assert UNREACHABLE in result.stderr
