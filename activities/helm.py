"""Run the helm command: always an argument list, never a shell.

Every value that comes from a request was validated (release, namespace,
chart path or reference), and option values are passed as ``--flag=value``
so that no input can become an option of its own. Values go to helm in a
JSON file with mode 0600 inside a private temporary folder that is removed
after the call, never on the command line where ``ps`` would show them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from activities.kubeapi import hide_values
from deployer.inputs import ChartRef, InvalidRequestError

STDERR_CAP = 2000
# libyaml's C parser when PyYAML was built with it. In a py-spy
# profile of the worker running 20 deploys at once, the pure-Python parser
# took 11 % of the samples, mostly on `helm template` output.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
PENDING_STATES = ("pending-install", "pending-upgrade", "pending-rollback")


RENDER_CACHE_ENTRIES = 64


def _death_signal_prefix() -> tuple[str, ...]:
    """Return the command that makes helm die with the worker, or nothing.

    A worker killed with SIGKILL cannot stop its helm, so that helm would go
    on applying while the retried attempt runs a helm of its own against the
    same release. util-linux's setpriv sets the parent-death signal (Linux
    only), which helm keeps across exec. Without setpriv, helm runs as is.
    """
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    if setpriv is None:
        return ()
    # An older setpriv without --pdeathsig would fail every helm call, so its
    # help text decides.
    try:
        usage = subprocess.run(
            [setpriv, "--help"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return (setpriv, "--pdeathsig=KILL", "--") if "--pdeathsig" in usage else ()


DEATH_SIGNAL_PREFIX = _death_signal_prefix()
RENDER_CACHE_TTL_S = 900.0


def cap_stderr(text: str) -> str:
    """Return text cut to about STDERR_CAP characters, keeping both ends.

    helm names the failing object at the start of its error and the reason at
    the end, with the object's spec between them when the API server rejects
    a patch.
    """
    if len(text) <= STDERR_CAP:
        return text
    head = STDERR_CAP // 3
    tail = STDERR_CAP - head
    return (
        f"{text[:head]} [... {len(text) - STDERR_CAP} characters cut ...] "
        + (text[-tail:])
    )


# helm template appends this to an error (pkg/cmd/template.go, helm v4.3.2).
HELM_DEBUG_HINT = "Use --debug flag to render out invalid YAML"


# The schema check of helm v4.3.2 (santhosh-tekuri/jsonschema v6.0.3, its
# kind/kind.go) quotes a rejected string before "does not match pattern" and
# "is not valid FORMAT:", and the format's own error after that may quote it
# again. The string may be a secret typed into the wrong key, or a password
# in a URL such as image.repository.
QUOTED = r"'(?:[^'\\]|\\.)*'"
SCHEMA_PATTERN_VALUE = re.compile(QUOTED + r"(?= does not match pattern )")
SCHEMA_FORMAT_VALUE = re.compile(QUOTED + r" is not valid ([^\s:]+):[^\n]*")


# A quoted value in helm's log lines (level=WARN msg="..." error="..."), in
# which Go's log/slog text handler escaped quotes, backslashes and breaks.
LOGFMT_QUOTED = re.compile(r'(?<=[\w.]=)"((?:[^"\\]|\\.)*)"')
LOGFMT_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


def unquote_logfmt(text: str) -> str:
    """Return text with the escapes in its logfmt values undone, so that the
    API server's errors in them read, and are hidden, as in helm's Error line.

    Escapes other than \\", \\\\, \\n and \\t stay as they are.
    """

    def unescape(value: re.Match[str]) -> str:
        inner = re.sub(
            r"\\(.)",
            lambda e: LOGFMT_ESCAPES.get(e.group(1), "\\" + e.group(1)),
            value.group(1),
        )
        return f'"{inner}"'

    return LOGFMT_QUOTED.sub(unescape, text)


def hide_schema_values(text: str) -> str:
    """Return helm's error text with each rejected value replaced: those of
    its schema check, and those of the API server's errors that it passes on."""
    text = SCHEMA_PATTERN_VALUE.sub("(value not shown)", text)
    text = SCHEMA_FORMAT_VALUE.sub(r"(value not shown) is not valid \1", text)
    return hide_values(text)


class HelmError(Exception):
    """helm exited non-zero; the message has its arguments and stderr."""

    def __init__(self, command: str, returncode: int, stderr: str) -> None:
        self.command = command
        self.returncode = returncode
        # The hint names a helm flag that a user of the deployer cannot pass.
        # Values go before the text is cut: a cut inside a quoted value would
        # leave it unclosed, and then not hidden.
        text = unquote_logfmt(stderr.replace(HELM_DEBUG_HINT, "").strip())
        self.stderr = cap_stderr(hide_schema_values(text))
        super().__init__(
            f"`helm {command}` failed with exit code {returncode}: {self.stderr}"
        )

    @property
    def schema_rejected(self) -> bool:
        """Tell whether the chart's values.schema.json rejected the values."""
        return "values don't meet the specifications of the schema" in self.stderr

    @property
    def pending(self) -> bool:
        """Tell whether the release is left pending by an earlier helm run."""
        return "another operation (install/upgrade/rollback) is in progress" in (
            self.stderr
        )

    @property
    def owned_elsewhere(self) -> bool:
        """Tell whether an object to apply exists outside this release.

        helm does not adopt an object that lacks its release's ownership
        labels and annotations, or that carries another release's.
        """
        return "cannot be imported into the current release" in self.stderr

    @property
    def forbidden(self) -> bool:
        """Tell whether the API server's RBAC denied one of helm's requests."""
        # The Kubernetes authorizer's message: `... is forbidden: User "x" cannot`.
        return " is forbidden: User " in self.stderr


class ChartNotFoundError(Exception):
    """A chart path does not exist inside the chart root."""


class InvalidRenderError(Exception):
    """The chart rendered a document that cannot be applied as one object."""


@dataclass(frozen=True)
class Helm:
    """The helm binary and what every call of it needs."""

    binary: str
    kubeconfig: str | None
    kube_context: str | None
    chart_root: Path

    def _global_flags(self) -> list[str]:
        flags = []
        if self.kubeconfig:
            flags.append(f"--kubeconfig={self.kubeconfig}")
        if self.kube_context:
            flags.append(f"--kube-context={self.kube_context}")
        return flags

    async def run(self, args: list[str], timeout_s: float = 300.0) -> str:
        """Run helm with args and return its stdout; raise HelmError."""
        process = await asyncio.create_subprocess_exec(
            *DEATH_SIGNAL_PREFIX,
            self.binary,
            *args,
            *self._global_flags(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
            # A HelmError, so that the activity reports a helm failure and not
            # a Kubernetes API one (TimeoutError counts as a transient API error).
            raise HelmError(
                " ".join(args[:2]),
                process.returncode or -1,
                f"timed out after {timeout_s:.0f} s and was killed",
            ) from None
        except asyncio.CancelledError:
            process.kill()
            await process.wait()
            raise
        if process.returncode != 0:
            raise HelmError(
                " ".join(args[:2]),
                process.returncode or 1,
                stderr.decode(errors="replace"),
            )
        return stdout.decode()

    def chart_args(self, chart: ChartRef) -> list[str]:
        """Return the chart argument(s) for install, upgrade and template."""
        if chart.path is not None:
            return [str(self.resolve_path(chart.path))]
        # ChartRef's validator guarantees all three when path is None.
        assert chart.repository is not None
        assert chart.name is not None
        assert chart.version is not None
        if chart.repository.startswith("oci://"):
            return [
                f"{chart.repository.rstrip('/')}/{chart.name}",
                f"--version={chart.version}",
            ]
        return [chart.name, f"--repo={chart.repository}", f"--version={chart.version}"]

    def resolve_path(self, relative: str) -> Path:
        """Resolve a chart path inside the chart root; raise ChartNotFoundError."""
        root = self.chart_root.resolve()
        path = (root / relative).resolve()
        if path != root and root not in path.parents:
            raise ChartNotFoundError(
                f"chart path {relative!r} leaves the chart root {root}"
            )
        if not (path / "Chart.yaml").is_file():
            raise ChartNotFoundError(
                f"chart path {relative!r} has no Chart.yaml under {root}; "
                "pass a folder that holds a chart, relative to the worker's chart root "
                "(VENTROS_DEPLOY_CHART_ROOT)"
            )
        return path

    def cache_key(self, *parts: Any, chart: ChartRef) -> str:
        """Return a key for what helm makes of chart and parts.

        A path chart is named by the digest of its files, so an edited chart
        gets a new key. A repository chart is named by its reference: a
        published version does not change.
        """
        digest = hashlib.sha256()
        if chart.path is not None:
            root = self.resolve_path(chart.path)
            # helm follows links to folders (a linked subchart), so the
            # digest follows them too.
            for folder, dirs, files in os.walk(root, followlinks=True):
                dirs.sort()
                for name in sorted(files):
                    path = Path(folder, name)
                    digest.update(str(path.relative_to(root)).encode() + b"\0")
                    digest.update(path.read_bytes() + b"\0")
        else:
            digest.update(chart.model_dump_json().encode())
        digest.update(
            json.dumps(
                [self.kube_context, *parts], sort_keys=True, default=str
            ).encode()
        )
        return digest.hexdigest()

    async def template(
        self, release: str, namespace: str, chart: ChartRef, values: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Render the chart and return its objects (never log or return them whole)."""
        with values_file(values) as path:
            out = await self.run(
                [
                    "template",
                    release,
                    *self.chart_args(chart),
                    f"--namespace={namespace}",
                    f"--values={path}",
                    "--skip-tests",
                ]
            )
        return rendered_objects(out)

    @contextlib.asynccontextmanager
    async def chart_at_version(
        self, chart: ChartRef, app_version: str | None
    ) -> AsyncIterator[list[str]]:
        """Yield the chart arguments for an upgrade that records app_version.

        helm records a release's app version from the chart's Chart.yaml and
        has no upgrade option to set it, so `helm list` and `helm history`
        showed the chart's default for a deploy of another version. With
        app_version, the upgrade gets the chart packaged by `helm package
        --app-version` (a repository chart is pulled first) into a private
        folder that is removed after the upgrade. None leaves the chart as it is.
        """
        if app_version is None:
            yield self.chart_args(chart)
            return
        folder = tempfile.mkdtemp(prefix=f"{os.getpid()}-chart-", dir=_values_root())
        try:
            source = self.resolve_path(chart.path) if chart.path is not None else None
            if source is None:
                # A repository chart untars into a folder named like the chart.
                assert chart.name is not None  # ChartRef's validator ensures it.
                pulled = os.path.join(folder, "pulled")
                await self.run(
                    ["pull", *self.chart_args(chart), "--untar", f"--untardir={pulled}"]
                )
                source = Path(pulled, chart.name)
            packaged = os.path.join(folder, "packaged")
            out = await self.run(
                [
                    "package",
                    str(source),
                    f"--app-version={app_version}",
                    f"--destination={packaged}",
                ]
            )
            # helm prints "Successfully packaged chart and saved it to: PATH".
            archive = out.strip().rpartition(": ")[2]
            if not archive.startswith(packaged):
                raise HelmError("helm package", 1, f"unexpected output: {out[:200]}")
            yield [archive]
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)

    async def upgrade_install(
        self,
        release: str,
        namespace: str,
        chart: ChartRef,
        values: dict[str, Any],
        timeout_s: float = 300.0,
        manifest: bool = False,
        skip_crds: bool = False,
        app_version: str | None = None,
    ) -> list[dict[str, Any]]:
        """Install or upgrade the release; with manifest, return its objects.

        The objects come from the release that `--output=json` prints, which
        saves the separate `helm get manifest` call (about 0.1 s) a caller
        would need after the upgrade. skip_crds leaves out the chart's crds/
        folder, which helm applies only on a first install. app_version is the
        version that the release records (see chart_at_version).
        """
        async with self.chart_at_version(chart, app_version) as chart_args:
            return await self._upgrade_install(
                release,
                namespace,
                chart_args,
                values,
                timeout_s=timeout_s,
                manifest=manifest,
                skip_crds=skip_crds,
            )

    async def _upgrade_install(
        self,
        release: str,
        namespace: str,
        chart_args: list[str],
        values: dict[str, Any],
        timeout_s: float,
        manifest: bool,
        skip_crds: bool,
    ) -> list[dict[str, Any]]:
        args = [
            "upgrade",
            release,
            *chart_args,
            "--install",
            f"--namespace={namespace}",
            # No --create-namespace: the base phase creates the namespace
            # (DeployActivities._ensure_namespace), and helm validated that
            # one Namespace against the cluster's OpenAPI document each time.
            #
            # No OpenAPI pass either. Releases that helm v4 installs are
            # applied server-side with fieldValidation=Strict, so the API
            # server rejects unknown fields and wrong types, and helm's pass
            # let those through (tests/e2e/test_helm_upgrade.py). What it did
            # reject before applying anything, a document without apiVersion
            # or a List with a bad item, rendered_objects rejects in
            # validate_request for our chart. Skipping the pass cut an upgrade
            # of the Temporal chart from 0.22 to 0.12 CPU-s (docs/benchmarks.md).
            "--disable-openapi-validation",
        ]
        if manifest:
            args.append("--output=json")
        if skip_crds:
            args.append("--skip-crds")
        with values_file(values) as path:
            out = await self.run([*args, f"--values={path}"], timeout_s)
        if not manifest:
            return []
        text = json.loads(out).get("manifest") or ""
        return [
            doc
            for doc in load_documents(text)
            if isinstance(doc, dict) and doc.get("kind")
        ]

    async def apply_release(
        self,
        release: str,
        namespace: str,
        chart: ChartRef,
        values: dict[str, Any],
        manifest: bool = False,
        skip_crds: bool = False,
        app_version: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Upgrade or install the release, recovering it when helm reports it pending.

        Return the objects (with manifest) and a note of any recovery. helm
        rejects an upgrade of a pending release before it changes anything,
        so the recovery runs only after that error. A `helm status` before
        every upgrade would cost one more helm process each time.
        """
        upgrade = functools.partial(
            self.upgrade_install,
            release,
            namespace,
            chart,
            values,
            manifest=manifest,
            skip_crds=skip_crds,
            app_version=app_version,
        )
        try:
            return await upgrade(), None
        except HelmError as error:
            if not error.pending:
                raise
        note = await self.recover_pending(release, namespace)
        objects = await upgrade()
        return objects, note

    async def crds(self, chart: ChartRef) -> list[Any]:
        """Return the documents of chart's crds/ folders, its subcharts' included.

        Every document is kept, an empty one as None, so that a caller sees
        all that helm would install.
        """
        out = await self.run(["show", "crds", *self.chart_args(chart)])
        return list(load_documents(out))

    async def status(self, release: str, namespace: str) -> str | None:
        """Return the release's status (deployed, pending-install, ...) or None."""
        try:
            out = await self.run(
                ["status", release, f"--namespace={namespace}", "--output=json"]
            )
        except HelmError as error:
            if "not found" in error.stderr:
                return None
            raise
        info = json.loads(out).get("info", {})
        return str(info.get("status", "unknown"))

    async def manifest(self, release: str, namespace: str) -> list[dict[str, Any]]:
        out = await self.run(["get", "manifest", release, f"--namespace={namespace}"])
        return [
            doc
            for doc in load_documents(out)
            if isinstance(doc, dict) and doc.get("kind")
        ]

    async def history(self, release: str, namespace: str) -> list[dict[str, Any]]:
        out = await self.run(
            ["history", release, f"--namespace={namespace}", "--output=json"]
        )
        return list(json.loads(out))

    async def recover_pending(self, release: str, namespace: str) -> str | None:
        """Clear a release left pending by an interrupted run; return what was done.

        A pending upgrade or rollback is rolled back to the last deployed
        revision. A pending first install has nothing to roll back to, so it
        is uninstalled; the next upgrade --install starts it afresh.
        """
        state = await self.status(release, namespace)
        if state not in PENDING_STATES:
            return None
        if state == "pending-install":
            await self.run(["uninstall", release, f"--namespace={namespace}", "--wait"])
            return f"uninstalled release {release}, left {state} by an interrupted run"
        deployed = [
            entry["revision"]
            for entry in await self.history(release, namespace)
            if entry.get("status") in ("deployed", "superseded")
        ]
        if not deployed:
            await self.run(["uninstall", release, f"--namespace={namespace}", "--wait"])
            return f"uninstalled release {release}: {state} with no earlier revision"
        revision = str(max(deployed))
        await self.run(
            ["rollback", release, revision, f"--namespace={namespace}", "--wait"]
        )
        return f"rolled release {release} back to revision {revision}, left {state}"


class RenderCache:
    """A cache of helm output by key, kept in the worker's memory.

    Every phase of a deploy renders the same chart with the same values, and
    one `helm template` costs about 0.1 s of CPU. Callers build keys with
    Helm.cache_key, so changed files or values render again. Entries expire
    after ttl_s, at most max_entries are kept, and each caller gets its own
    copy. Callers that request the same key at once share one helm run.
    """

    def __init__(
        self, max_entries: int = RENDER_CACHE_ENTRIES, ttl_s: float = RENDER_CACHE_TTL_S
    ) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._running: dict[str, asyncio.Future[Any]] = {}
        self.misses = 0

    async def get(self, key: str, make: Callable[[], Awaitable[Any]]) -> Any:
        while True:
            entry = self._entries.get(key)
            if entry and time.monotonic() - entry[0] < self.ttl_s:
                self._entries.move_to_end(key)
                return copy.deepcopy(entry[1])
            running = self._running.get(key)
            if running is None:
                return copy.deepcopy(await self._make(key, make))
            try:
                await asyncio.shield(running)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # The task running helm was cancelled, not this caller, so the
                # loop runs helm again.

    async def _make(self, key: str, make: Callable[[], Awaitable[Any]]) -> Any:
        running = asyncio.get_running_loop().create_future()
        self._running[key] = running
        self.misses += 1
        try:
            value = await make()
        except Exception as error:
            running.set_exception(error)
            # Mark the exception retrieved, because no caller may be waiting.
            running.exception()
            raise
        except BaseException:
            # Cancelled (or the process is exiting): waiters run helm themselves.
            running.cancel()
            raise
        finally:
            self._running.pop(key, None)
        running.set_result(value)
        self._entries[key] = (time.monotonic(), value)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value


SOURCE_LINE = re.compile(r"^# Source: (\S+)", re.MULTILINE)
DOCUMENT_START = re.compile(r"^---[ \t]*$", re.MULTILINE)


def rendered_objects(text: str) -> list[dict[str, Any]]:
    """Return the objects of a rendered manifest; raise InvalidRenderError.

    Each document must be one object with apiVersion, kind and metadata.name:
    the phases apply objects one by one, and helm without its OpenAPI pass
    would apply the objects before a bad one. Messages name the template and
    the problem, never the document's content, which may hold secret values.
    """
    objects: list[dict[str, Any]] = []
    source = "the rendered chart"
    for chunk in DOCUMENT_START.split(text):
        found = SOURCE_LINE.search(chunk)
        if found:
            source = found.group(1)
        try:
            documents = list(load_documents(chunk))
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or "cannot be parsed"
            mark = getattr(error, "problem_mark", None)
            where = f" (line {mark.line + 1} of the document)" if mark else ""
            raise InvalidRenderError(
                f"{source}: not valid YAML: {problem}{where}"
            ) from None
        for document in documents:
            if document is None:
                continue
            problem = object_problem(document)
            if problem:
                raise InvalidRenderError(f"{source}: {problem}")
            objects.append(document)
    return objects


def object_problem(document: Any) -> str:
    """Return why document is not one applicable object, or an empty string."""
    if not isinstance(document, dict):
        return f"renders a YAML {type(document).__name__}, not an object"
    for field in ("apiVersion", "kind"):
        value = document.get(field)
        if not isinstance(value, str) or not value:
            return f"renders an object without {field}"
    kind = document["kind"]
    if kind.endswith("List") and "items" in document:
        return f"renders a {kind}; render each item as a document of its own"
    metadata = document.get("metadata")
    if not isinstance(metadata, dict) or not metadata.get("name"):
        return f"renders a {kind} without metadata.name"
    return ""


def load_documents(text: str) -> Iterator[Any]:
    """Parse a multi-document YAML stream with the safe loader."""
    return yaml.load_all(text, Loader=SAFE_LOADER)


def chart_metadata(text: str) -> dict[str, Any]:
    """Return a Chart.yaml's fields; empty when the text is not a YAML mapping."""
    try:
        metadata = yaml.load(text, Loader=SAFE_LOADER)
    except yaml.YAMLError:
        return {}
    return metadata if isinstance(metadata, dict) else {}


def chart_app_version(text: str) -> str | None:
    """Return the appVersion of a Chart.yaml's text, or None without one."""
    version = chart_metadata(text).get("appVersion")
    return None if version is None else str(version)


class ValuesNotEncodableError(InvalidRequestError):
    """The values hold a number that JSON cannot carry (NaN or infinity)."""


@contextlib.contextmanager
def values_file(values: dict[str, Any]) -> Iterator[str]:
    """Write values to a 0600 file in a private folder; remove both after.

    The file is JSON, which helm reads as YAML with the same meaning: every
    string stays a string. A YAML dump leaves `1e3`, `y` or `0o17` unquoted,
    and helm's YAML reader turns them into numbers or booleans.
    """
    try:
        text = json.dumps(values, allow_nan=False)
    except ValueError:
        raise ValuesNotEncodableError(
            "the values hold NaN or an infinite number, which helm cannot take; "
            "give the value as a string or a finite number"
        ) from None
    folder = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=_values_root())
    path = os.path.join(folder, "values.yaml")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.rmdir(folder)


_VALUES_ROOT: str | None = None


def _values_root() -> str:
    """Return this user's folder for values files, made on first use.

    Each values folder starts with the pid of the worker that made it. A
    worker killed while helm ran leaves its folder, secrets included, so the
    first use in a process removes the folders of processes that are gone.
    When the folder's path is taken by something this user does not own,
    values folders go straight into the temporary folder instead.
    """
    global _VALUES_ROOT
    if _VALUES_ROOT is None:
        root = os.path.join(tempfile.gettempdir(), f"ventros-values-{os.getuid()}")
        with contextlib.suppress(FileExistsError):
            os.mkdir(root, 0o700)
        info = os.lstat(root)
        private = (
            stat.S_ISDIR(info.st_mode)
            and info.st_uid == os.getuid()
            and stat.S_IMODE(info.st_mode) == 0o700
        )
        _VALUES_ROOT = root if private else tempfile.gettempdir()
        if private:
            remove_stale_values(root)
    return _VALUES_ROOT


def remove_stale_values(root: str) -> list[str]:
    """Remove the values folders under root whose process has ended; return
    their names."""
    removed = []
    for name in os.listdir(root):
        pid_text = name.split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
