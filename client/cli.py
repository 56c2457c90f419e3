"""ventros-deploy: start, follow, retry and abort deploys; roll back and destroy.

Exit codes:
  0  success (the deploy succeeded, or the request was accepted)
  1  the deploy failed, was aborted, or a phase waits for retry
  2  invalid arguments or request, or a key ring problem (nothing was
     started); also a run that the workflow rejected before applying
     anything, such as chart values that validate rejected
  3  a deploy of this release is already running; for rollback and destroy
     also: the same rollback or destroy is already running
  4  no deploy with that workflow id
  5  the bootstrap Temporal cannot be reached, or no worker answered status,
     retry or abort (without --no-wait) within 10 s
  141  the reader of the output closed it early (| head); nothing is known
       about the run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text
from temporalio.api.enums.v1 import (
    TaskQueueKind,
    TaskQueueType,
    WorkflowExecutionStatus,
)
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflow.v1 import WorkflowExecutionInfo
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from deployer import contracts
from deployer.codec import KeyRingError, NoKeyRingError, PayloadDecryptionError
from deployer.connect import TlsFileError, connect, key_ring_configured
from deployer.inputs import (
    DEFAULT_TIMEOUT_S,
    MAX_VALUES_BYTES,
    MAX_VALUES_DEPTH,
    TIMEOUT_MAX_S,
    TIMEOUT_MIN_S,
    DeployRequest,
    InvalidRequestError,
    check_image_tag,
    cluster_namespace,
    json_type_name,
    parse_request,
    workflow_id_for,
)
from deployer.lifecycle import (
    DRAIN_TIMEOUT_MAX_S,
    DestroyStatus,
    RollbackStatus,
    how_to_stop,
    other_runs,
    parse_destroy_request,
    parse_rollback_request,
)
from deployer.phases import (
    NAMESPACE_ATTRIBUTE,
    PHASE_ATTRIBUTE,
    RELEASE_ATTRIBUTE,
    DeployStatus,
    PhaseState,
)
from deployer.settings import TemporalSettings, describe_settings_error

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_RUNNING, EXIT_NOT_FOUND, EXIT_UNREACHABLE = (
    range(6)
)
# The reader of standard output closed it early (`| head`): the shell's code
# for a process that SIGPIPE ended (128 + 13), as for other command-line tools.
EXIT_PIPE_CLOSED = 141
WORKFLOW_TYPE = "VentrosDeploy"
DESTROY_TYPE = "VentrosDestroy"
ROLLBACK_TYPE = "VentrosRollback"
FOLLOW_INTERVAL_S = 0.5
# Commands that start a workflow, whose input then stays in its history.
STARTING_COMMANDS = frozenset({"start", "rollback", "destroy"})
# How long `abort` waits for the run to end after the abort was accepted.
ABORT_WAIT_S = 60.0
STATE_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "waiting-for-retry": "yellow",
    "aborted": "red",
    "canceled": "red",
}


AnyStatus = DeployStatus | RollbackStatus
StatusModel = type[DeployStatus] | type[RollbackStatus]
# The status query's result type of each workflow type; DestroyStatus has the
# deploy's shape and adds the objects a destroy kept.
STATUS_MODELS: dict[str, StatusModel] = {
    WORKFLOW_TYPE: DeployStatus,
    DESTROY_TYPE: DestroyStatus,
    ROLLBACK_TYPE: RollbackStatus,
}


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def parse_set(pairs: list[str], literal: bool = False) -> dict[str, Any]:
    """Return ["a.b=1", "c=x"] as {"a": {"b": 1}, "c": "x"}.

    Values are read as YAML (see read_set_value), or kept as strings when
    literal is set, as for --set-string.
    """
    option = "--set-string" if literal else "--set"
    values: dict[str, Any] = {}
    for pair in pairs:
        # Messages name the key only: the value may be a secret.
        key, sep, raw = pair.partition("=")
        if not sep:
            raise CliError(
                f"invalid {option} without '=': expected KEY=VALUE such as "
                "app.replicas=3",
                EXIT_USAGE,
            )
        if not key or any(not part for part in key.split(".")):
            raise CliError(
                f"invalid {option} key {key!r}: expected KEY=VALUE with a dotted KEY "
                "such as app.replicas=3, without empty parts",
                EXIT_USAGE,
            )
        if "[" in key or "]" in key:
            raise CliError(
                f"invalid {option} key {key!r}: list indexes are not supported. "
                "Set the whole list, for example --set 'app.args=[a, b]', or "
                "put the list in a --values file",
                EXIT_USAGE,
            )
        node = values
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CliError(
                    f"invalid {option} {key}: {part} is already set to a scalar",
                    EXIT_USAGE,
                )
        if literal:
            node[parts[-1]] = raw
            continue
        try:
            node[parts[-1]] = read_set_value(raw)
        except DuplicateKeyError as error:
            raise CliError(
                f"invalid --set {key}: key {error.key} is given twice in the map, "
                "and YAML would keep only the second; remove one",
                EXIT_USAGE,
            ) from None
        except RecursionError:
            raise CliError(
                f"invalid --set {key}: it nests too deep to decode; keep values at "
                f"most {MAX_VALUES_DEPTH} levels deep",
                EXIT_USAGE,
            ) from None
        except YAML_READ_ERRORS as error:
            raise CliError(
                f"invalid --set {key}: {describe_yaml_error(error)}; quote the "
                "value, or pass it with --set-string",
                EXIT_USAGE,
            ) from None
    return values


def read_set_value(raw: str) -> Any:
    """Read a --set value as YAML, unless that reading would change its text.

    YAML drops a trailing comment ("pw #x" reads as "pw"), turns "00123" and
    "0o17" into numbers and "yes" into true. Each such value stays the literal
    string, so --set never stores anything but what was typed or its exact
    YAML meaning. So does a value with an anchor, alias, tag or line break,
    a block scalar ("|" reads as ""), and text that YAML cannot read, such
    as "@pw" or "=". Quoted scalars and flow collections ("[1, 2]") are read
    as YAML. Raises yaml.YAMLError (or an error of a tag's constructor) for a
    flow collection that YAML cannot read, such as an unclosed bracket.
    """
    if not raw:
        return ""
    if any(brk in raw for brk in LINE_BREAKS):
        return raw  # YAML folds a line break of a plain scalar into a space.
    try:
        return _read_yaml_value(raw)
    except YAML_READ_ERRORS:
        if raw.lstrip().startswith(("[", "{")):
            raise  # Meant as a list or a map: a typo there is an error.
        return raw


# The line breaks of YAML 1.1, which PyYAML reads.
LINE_BREAKS = ("\n", "\r", "\x85", "\u2028", "\u2029")


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A YAML mapping that gives one key twice, of which YAML keeps the last."""

    def __init__(self, key: str, first_line: int, mark: yaml.Mark) -> None:
        super().__init__(
            problem=f"key {key} is given again (first at line {first_line})",
            problem_mark=mark,
        )
        self.key = key
        self.first_line = first_line
        self.line = mark.line + 1


class UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that raises DuplicateKeyError for a key given twice
    in one mapping. Keys that a merge key (<<) brings in may be overridden."""

    def construct_document(self, node: yaml.Node) -> Any:
        # Before construction: constructing a mapping with a merge key adds
        # the merged keys to its node, in place.
        self._check_unique_keys(node)
        return super().construct_document(node)

    def _check_unique_keys(self, root: yaml.Node) -> None:
        seen: set[int] = set()
        stack = [root]
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue  # An alias of a node already checked.
            seen.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)
            elif isinstance(node, yaml.MappingNode):
                self._check_mapping(node)
                for key_node, value_node in node.value:
                    stack.extend((key_node, value_node))

    def _check_mapping(self, node: yaml.MappingNode) -> None:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # A complex key, which construction rejects.
            key = self.construct_object(key_node)
            first = lines.get(key)
            if first is not None:
                raise DuplicateKeyError(str(key), first, key_node.start_mark)
            lines[key] = key_node.start_mark.line + 1


def load_yaml(text: str) -> Any:
    """Read YAML text safely, rejecting a key given twice in one mapping."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def _read_yaml_value(raw: str) -> Any:
    """Return raw's YAML value, or raw when the value would change its text."""
    if _has_node_properties(raw):
        return raw
    node = yaml.compose(raw, Loader=yaml.SafeLoader)
    if node is None:
        return raw  # Only a comment, blanks or a document marker.
    # Leading or trailing text outside the node is blanks or a comment.
    spans_all = node.start_mark.index == 0 and node.end_mark.index == len(raw)
    if not spans_all or not _reads_as_written(node):
        return raw
    return load_yaml(raw)


def _has_node_properties(raw: str) -> bool:
    """Tell whether raw's YAML has an anchor, an alias or an explicit tag.

    YAML drops each of them from the value it reads ("&pw x" reads as "x"),
    and a password may start with '&', '*' or '!'.
    """
    for event in yaml.parse(raw, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            return True
        if isinstance(event, yaml.NodeEvent) and event.anchor is not None:
            return True
        if getattr(event, "tag", None) is not None:
            return True
    return False


def _reads_as_written(node: yaml.Node) -> bool:
    """Tell whether each plain scalar in node means what its text shows."""
    if isinstance(node, yaml.CollectionNode) and not node.flow_style:
        return False  # "user: pw" or "- pw" is text, not a block collection.
    if isinstance(node, yaml.SequenceNode):
        return all(_reads_as_written(item) for item in node.value)
    if isinstance(node, yaml.MappingNode):
        return all(
            _reads_as_written(key) and _reads_as_written(value)
            for key, value in node.value
        )
    if not isinstance(node, yaml.ScalarNode):
        return True
    if node.style in ("|", ">"):
        return False  # A block scalar's header: "|" alone reads as "".
    if node.style is not None:
        return True  # Quoted scalars are strings as written.
    text = str(node.value)
    value = yaml.safe_load(text)
    if isinstance(value, bool):
        return text.lower() in ("true", "false")
    if value is None:
        return text == "null"
    if isinstance(value, float) and not math.isfinite(value):
        return False  # .inf and .nan have no JSON form.
    if isinstance(value, int | float):
        # The canonical form: "00123" and "1.50" read as 123 and 1.5.
        canonical = str(yaml.safe_dump(value)).splitlines()[0]
        return canonical == text
    # Dates and timestamps are not JSON, so they stay strings.
    return isinstance(value, str)


# A token that PyYAML quotes in a problem text ("found undefined alias 'pw'").
QUOTED_TOKEN = re.compile(r"'[^']*'|\"[^\"]*\"")
# Quoted tokens that are kept: PyYAML's names of token kinds ('<scalar>'), and
# one or two characters of punctuation or an escape ("expected ',' or ']'").
STRUCTURAL_TOKEN = re.compile(r"""['"](?:<[a-z ]+>|[^\w\s'"]{1,2}|\\\w)['"]""")


def _hide_token(match: re.Match[str]) -> str:
    token = match.group(0)
    return token if STRUCTURAL_TOKEN.fullmatch(token) else "(text not shown)"


# The errors PyYAML raises while it reads text. A tag such as !!int or
# !!timestamp builds its value with Python, which puts the text in its error.
YAML_READ_ERRORS = (yaml.YAMLError, ValueError, TypeError, AttributeError)


def describe_yaml_error(error: Exception) -> str:
    """Describe a YAML error by problem and position, without the offending text.

    PyYAML's own message quotes the line, and its problem texts quote the
    alias or tag they did not understand: both may be part of a secret value
    such as a password that starts with '*' or '!'. An error that a tag's
    constructor raised (int() of the text) is named by its kind only.
    """
    if not isinstance(error, yaml.YAMLError):
        return (
            "a YAML tag could not build its value "
            f"({type(error).__name__}; the text is not shown)"
        )
    parts = []
    for text, mark in (
        (getattr(error, "context", None), getattr(error, "context_mark", None)),
        (getattr(error, "problem", None), getattr(error, "problem_mark", None)),
    ):
        if text:
            text = QUOTED_TOKEN.sub(_hide_token, str(text))
        if text and mark:
            parts.append(f"{text} at line {mark.line + 1}, column {mark.column + 1}")
        elif text:
            parts.append(str(text))
    return ": ".join(parts) or "invalid YAML"


def build_request(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {}
    if args.request:
        request = read_request_file(args.request)
    values: dict[str, Any] = dict(request.get("values") or {})
    if args.values:
        try:
            loaded = load_yaml(read_input_file(args.values, "--values")) or {}
        except DuplicateKeyError as error:
            raise CliError(
                f"invalid --values {args.values}: key {error.key} is given twice "
                f"in one mapping, at lines {error.first_line} and {error.line}, "
                "and YAML would keep only the second; merge the two or remove one",
                EXIT_USAGE,
            ) from None
        except OSError as error:
            raise CliError(
                f"cannot read --values {args.values}: {error}", EXIT_USAGE
            ) from None
        except UnicodeDecodeError as error:
            raise CliError(
                f"cannot read --values {args.values}: byte {error.start} is not "
                "UTF-8; save the file as UTF-8 text",
                EXIT_USAGE,
            ) from None
        except YAML_READ_ERRORS as error:
            raise CliError(
                f"invalid YAML in --values {args.values}: {describe_yaml_error(error)}",
                EXIT_USAGE,
            ) from None
        except RecursionError:
            raise CliError(
                f"cannot read --values {args.values}: it nests too deep to decode; "
                f"keep values at most {MAX_VALUES_DEPTH} levels deep",
                EXIT_USAGE,
            ) from None
        if not isinstance(loaded, dict):
            raise CliError(
                f"--values {args.values} must hold a YAML mapping", EXIT_USAGE
            )
        values = _merge(values, loaded)
    values = _merge(values, parse_set(args.set or []))
    # Like helm, --set-string applies after --set.
    values = _merge(values, parse_set(args.set_string or [], literal=True))
    if values:
        request["values"] = values
    for field, value in (
        ("release", args.release),
        ("namespace", args.namespace),
        ("app_version", args.app_version),
        ("kube_context", args.kube_context),
    ):
        if value is not None:
            request[field] = value
    if args.chart:
        request["chart"] = {"path": args.chart}
    if args.no_operators:
        request["install_operators"] = False
    return request


# The largest --request or --values file the client reads. The values may be
# at most MAX_VALUES_BYTES of JSON, and their YAML with comments is longer.
MAX_INPUT_FILE_BYTES = 4 * MAX_VALUES_BYTES


def read_input_file(path: str, option: str) -> str:
    """Return the text of a --request or --values file.

    Reads at most MAX_INPUT_FILE_BYTES, so that a device such as /dev/zero or
    an endless pipe fails instead of filling the memory. Raises OSError and
    UnicodeDecodeError as reading does, and CliError for a larger file.
    """
    with open(path, "rb") as file:
        data = file.read(MAX_INPUT_FILE_BYTES + 1)
    if len(data) > MAX_INPUT_FILE_BYTES:
        raise CliError(
            f"cannot read {option} {path}: it is larger than "
            f"{MAX_INPUT_FILE_BYTES // 1024} KiB. The values may be at most "
            f"{MAX_VALUES_BYTES // 1024} KiB of JSON, so pass a smaller file",
            EXIT_USAGE,
        )
    return data.decode()


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build a JSON object, raising ValueError for a key given twice in it,
    of which json.loads would keep the last."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(
                f"key {json.dumps(key)} is given twice in one object, and most JSON "
                "readers keep only the last; merge the two or remove one"
            )
        data[key] = value
    return data


def read_request_file(path: str) -> dict[str, Any]:
    """Read a --request file: a JSON object whose values field is an object."""
    try:
        request = json.loads(
            read_input_file(path, "--request"), object_pairs_hook=unique_keys
        )
    except (OSError, ValueError) as error:
        raise CliError(f"cannot read --request {path}: {error}", EXIT_USAGE) from None
    except RecursionError:
        raise CliError(
            f"cannot read --request {path}: its JSON nests too deep to decode; "
            f"keep values at most {MAX_VALUES_DEPTH} levels deep",
            EXIT_USAGE,
        ) from None
    if not isinstance(request, dict):
        raise CliError(
            f"invalid --request {path}: the file must contain a JSON object of "
            f"deploy request fields, got {json_type_name(request)}; for example "
            '{"release": "ventros-crm", "namespace": "ventros-crm"}',
            EXIT_USAGE,
        )
    values = request.get("values")
    if values is not None and not isinstance(values, dict):
        raise CliError(
            f"invalid --request {path}: field values must be a JSON object of "
            f"chart values, got {json_type_name(values)}; for example "
            '"values": {"app": {"replicas": 3}}',
            EXIT_USAGE,
        )
    return request


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# -- rendering ----------------------------------------------------------------


def _short(text: str, namespace: str, limit: int | None = 60) -> str:
    """Drop the namespace (shown in the title) and cut the text to limit."""
    text = text.replace(f" in namespace {namespace}", "")
    if limit is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def status_title(status: DeployStatus | RollbackStatus) -> str:
    """Return the table title: the workflow id, its namespace and the state.

    A run whose input could not be parsed has no namespace.
    """
    where = f" ({status.namespace})" if status.namespace else ""
    return f"{status.workflow_id}{where}: {status.state}"


def phase_table(status: DeployStatus, live: dict[str, str] | None = None) -> Table:
    title = status_title(status)
    table = Table(title=title, title_justify="left")
    table.add_column("phase")
    table.add_column("state")
    table.add_column("tries", justify="right")
    table.add_column("time", justify="right")
    table.add_column("waiting on / last status", overflow="fold")
    for record in status.phases:
        duration = f"{record.duration_s:.1f} s" if record.duration_s is not None else ""
        detail = record.error or ""
        if detail and record.error_type:
            # The README's troubleshooting table names failures by this type.
            detail = f"{record.error_type}: {detail}"
        if not detail and record.state is PhaseState.RUNNING and live:
            detail = "; ".join(
                f"{ref}: {live[ref]}" for ref in record.waiting_on if ref in live
            )
            if not detail and not record.waiting_on:
                detail = live.get("__attempt__", "")
        if not detail and record.state is not PhaseState.SUCCEEDED:
            detail = ", ".join(record.waiting_on)
        # A succeeded phase shows what its apply noted whole, such as a
        # migration that was not run again.
        noted = not detail and bool(record.notes)
        if noted:
            detail = "; ".join(record.notes)
        if not detail:
            detail = ", ".join(record.waiting_on) or (record.last_status or "")
        style = STATE_STYLE.get(record.state.value, "")
        # An error is shown whole, because its end names the next step.
        limit: int | None = 200 if live else 60
        if record.error or noted:
            limit = None
        table.add_row(
            record.phase.value,
            Text(record.state.value, style=style),
            str(record.attempts),
            duration,
            _short(detail, status.namespace, limit),
        )
    return table


def rollback_table(status: RollbackStatus) -> Table:
    title = status_title(status)
    # The title sets the width: the two short columns would wrap it.
    table = Table(
        title=title, title_justify="left", show_header=False, min_width=len(title)
    )
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for label, value in (
        ("from version", status.from_version),
        ("to version", status.to_version),
        ("helm revision", status.helm_revision),
    ):
        table.add_row(label, "" if value is None else str(value))
    return table


def status_view(status: AnyStatus, live: dict[str, str] | None = None) -> Table:
    if isinstance(status, RollbackStatus):
        return rollback_table(status)
    return phase_table(status, live)


def status_model(workflow_id: str, workflow_type: str) -> StatusModel:
    """Return the status query's result type for a workflow type."""
    model = STATUS_MODELS.get(workflow_type)
    if model is None:
        raise CliError(
            f"{workflow_id} is a {workflow_type} workflow; ventros-deploy shows "
            f"{', '.join(STATUS_MODELS)} workflows only",
            EXIT_USAGE,
        )
    return model


async def fetch_status(
    handle: WorkflowHandle[Any, Any],
    model: StatusModel,
    rpc_timeout: timedelta | None = None,
) -> AnyStatus:
    status: AnyStatus = await handle.query(
        "status", result_type=model, rpc_timeout=rpc_timeout
    )
    return status


async def live_statuses(
    client: Client, handle: WorkflowHandle[Any, Any]
) -> dict[str, str]:
    """Return the last statuses that running wait activities heartbeated."""
    description = await handle.describe()
    statuses: dict[str, str] = {}
    for pending in description.raw_description.pending_activities:
        if pending.HasField("last_failure"):
            # Shown under the phase whose apply activity keeps failing. The
            # message may be encrypted, so it is decoded first.
            try:
                failure = await client.data_converter.decode_failure(
                    pending.last_failure
                )
                message = str(getattr(failure, "message", "") or failure)
            except PayloadDecryptionError as error:
                message = f"(cannot decrypt the error: {error})"
            statuses["__attempt__"] = f"attempt {pending.attempt - 1} failed: {message}"
        if not pending.heartbeat_details.payloads:
            continue
        details = await client.data_converter.decode(pending.heartbeat_details.payloads)
        for item in details:
            if isinstance(item, dict):
                statuses.update({str(k): str(v) for k, v in item.items()})
    return statuses


async def is_running(handle: WorkflowHandle[Any, Any]) -> bool:
    description = await handle.describe()
    return description.raw_description.workflow_execution_info.status == (
        WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING
    )


# -- commands -----------------------------------------------------------------


async def reject_while_other_runs(
    client: Client, kind: str, namespace: str, release: str
) -> None:
    """Raise CliError when a run of another kind of the same release runs.

    A deploy, a rollback and a destroy of one release change the same objects,
    so at most one of them runs. The workflows check this too, for starts that
    do not come through this client.
    """
    for other, workflow_id in other_runs(kind, namespace, release).items():
        try:
            running = await is_running(client.get_workflow_handle(workflow_id))
        except RPCError as error:
            if error.status is RPCStatusCode.NOT_FOUND:
                continue
            raise
        if running:
            raise CliError(
                f"a {other} of {release} in {namespace} is running: {workflow_id}. "
                f"Wait for it (`ventros-deploy watch {workflow_id}` shows it) or "
                f"{how_to_stop(other, workflow_id)}, then start the {kind} again",
                EXIT_RUNNING,
            )


async def cmd_start(
    client: Client,
    settings: TemporalSettings,
    args: argparse.Namespace,
    console: Console,
) -> int:
    raw = build_request(args)
    try:
        request = parse_request(raw)
        check_image_tag(request)
    except InvalidRequestError as error:
        raise CliError(str(error), EXIT_USAGE) from None
    await reject_while_other_runs(client, "deploy", request.namespace, request.release)
    try:
        handle = await client.start_workflow(
            WORKFLOW_TYPE,
            request.model_dump(mode="json"),
            id=request.workflow_id,
            task_queue=settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=start_attributes(
                settings, request.release, request.namespace
            ),
        )
    except WorkflowAlreadyStartedError:
        raise CliError(
            f"a deploy of {request.release} in {request.namespace} is already "
            f"running: {request.workflow_id}. Follow it with "
            f"`ventros-deploy watch {request.workflow_id}`",
            EXIT_RUNNING,
        ) from None
    if args.json and not args.follow:
        print(json.dumps({"workflow_id": handle.id, "run_id": handle.result_run_id}))
    else:
        console.print(f"started {handle.id}", highlight=False)
    if args.follow:
        return await follow(client, handle, args, console)
    return EXIT_OK


async def follow(
    client: Client,
    handle: WorkflowHandle[Any, Any],
    args: argparse.Namespace,
    console: Console,
) -> int:
    description = await handle.describe()
    model = status_model(handle.id, description.workflow_type)
    task_queue = description.task_queue
    info = description.raw_description.workflow_execution_info
    status = await recorded_status(client, description, model)
    if status is not None:
        ended = client.get_workflow_handle(handle.id, run_id=description.run_id)
        if not args.json:
            console.print(status_view(status))
        return await show_outcome(ended, status, args, console)
    if not await worker_polls(client, task_queue):
        if description.close_time is not None:
            return await show_ended_unqueried(
                handle, info, model, args, console, unqueried_note(task_queue)
            )
        raise no_worker_error(
            f"{no_poller(task_queue)}, so no worker runs {handle.id} or responds "
            "to its status query",
            task_queue,
            f"`ventros-deploy watch {handle.id}`",
        )
    try:
        return await follow_queried(
            client, handle, model, args, console, description.close_time is None
        )
    except RPCError as error:
        if error.status is RPCStatusCode.NOT_FOUND:
            raise
        description = await handle.describe()
        if description.close_time is not None:
            return await show_ended_unqueried(
                handle,
                description.raw_description.workflow_execution_info,
                model,
                args,
                console,
                query_failed_note(error, task_queue),
            )
        raise no_worker_error(
            f"the status query of {handle.id} failed: {error.message}",
            task_queue,
            f"`ventros-deploy watch {handle.id}`",
        ) from None


async def follow_queried(
    client: Client,
    handle: WorkflowHandle[Any, Any],
    model: StatusModel,
    args: argparse.Namespace,
    console: Console,
    running: bool,
) -> int:
    """Show the run's status until it ends or a phase waits for retry.

    running is True when the run was running as follow described it.
    """
    # A restarted worker gets the query once the server's sticky window passed.
    status = await query_status(handle, model, running)
    if args.json:
        while await is_running(handle) and not _needs_attention(status):
            await asyncio.sleep(FOLLOW_INTERVAL_S)
            status = await query_status(handle, model, running=True)
        status = await fetch_status(handle, model, WORKER_RESPONSE_TIMEOUT)
        return await show_outcome(handle, status, args, console)
    with Live(
        status_view(status), console=console, refresh_per_second=4, transient=False
    ) as live:
        while True:
            running = await is_running(handle)
            status = await query_status(handle, model, running)
            live.update(
                status_view(
                    status, await live_statuses(client, handle) if running else None
                )
            )
            if not running or _needs_attention(status):
                break
            await asyncio.sleep(FOLLOW_INTERVAL_S)
    if not console.is_terminal:
        # Off a terminal, Live leaves its last line without a line break.
        console.line()
    return await show_outcome(handle, status, args, console)


async def show_outcome(
    handle: WorkflowHandle[Any, Any],
    status: AnyStatus,
    args: argparse.Namespace,
    console: Console,
) -> int:
    """Print how a followed run ended, or why it stopped (a phase that waits
    for retry), after its status; return the exit code."""
    status, error_type, duration_s = await settle(handle, status)
    if args.json:
        print(json.dumps(with_error_type(status.model_dump(mode="json"), error_type)))
        return outcome_code(status, error_type)
    console.print(
        f"{status.state} after {duration_s:.1f} s" + type_suffix(error_type),
        highlight=False,
    )
    if isinstance(status, DeployStatus) and _needs_attention(status):
        failed = [r for r in status.phases if r.state is PhaseState.WAITING_FOR_RETRY]
        for record in failed:
            console.print(
                Text.assemble(
                    (
                        f"{record.phase.value} failed{type_suffix(record.error_type)}:",
                        "red",
                    ),
                    f" {record.error}",
                ),
                highlight=False,
            )
        console.print(
            f"fix the cause, then `ventros-deploy retry {status.workflow_id}`, "
            f"or `ventros-deploy abort {status.workflow_id}`",
            highlight=False,
        )
    elif isinstance(status, RollbackStatus):
        for line in (status.message, status.migration_note):
            if line:
                console.print(line, highlight=False, soft_wrap=True)
    elif isinstance(status, DestroyStatus) and status.message:
        # A successful destroy's message lists what it kept.
        console.print(status.message, highlight=False, soft_wrap=True)
    elif status.state != "succeeded" and status.message:
        # An invalid or aborted deploy has no failed phase, only this message.
        console.print(status.message, highlight=False, soft_wrap=True)
    typed = args.command == "start" and wants_set_string(status, error_type)
    if typed and args.set:
        console.print(
            "a --set value that reads as a number, boolean or null is sent as "
            "one; pass a value that must stay text with --set-string KEY=VALUE",
            highlight=False,
        )
    if typed and args.values:
        console.print(
            f"YAML reads a plain value in {args.values} such as 0012345, 1.50, "
            "yes or null as a number, boolean or null; quote a value that must "
            "stay text ('0012345')",
            highlight=False,
        )
    return outcome_code(status, error_type)


def type_suffix(error_type: str | None) -> str:
    """Return " (ERROR_TYPE)" to follow a state, or "" without an error type.

    The README's troubleshooting table lists failures by these types.
    """
    return f" ({error_type})" if error_type else ""


def with_error_type(data: dict[str, Any], error_type: str | None) -> dict[str, Any]:
    """Add the run's failure's error type to a status's JSON, when it has one."""
    if error_type:
        data["error_type"] = error_type
    return data


async def settle(
    handle: WorkflowHandle[Any, Any], status: AnyStatus
) -> tuple[AnyStatus, str | None, float]:
    """Return the status completed from Temporal for a run that has ended, its
    failure's error type, and how long the run took or has run so far, in s."""
    description = await handle.describe()
    end = description.close_time
    error_type = None
    if end is not None:
        execution = description.raw_description.workflow_execution_info.status
        status, error_type = await ended_status(handle, execution, status)
    duration = (end or datetime.now(UTC)) - description.start_time
    return status, error_type, duration.total_seconds()


def wants_set_string(status: AnyStatus, error_type: str | None) -> bool:
    """Tell whether the chart's schema rejected a value for not being a string."""
    if error_type != contracts.VALUES_REJECTED or not status.message:
        return False
    return SCHEMA_STRING_ERROR.search(status.message) is not None


# States in which the workflow itself ended the run.
ENDED_STATES = frozenset({"succeeded", "invalid", "aborted", "failed", "canceled"})
# Temporal's end state of a run, as status shows it when the workflow recorded none.
ENDED_EXECUTION_STATES = {
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_COMPLETED: "succeeded",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_FAILED: "failed",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_TERMINATED: "terminated",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_TIMED_OUT: "timed out",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_CANCELED: "canceled",
}
# How long a query or update waits for a worker to respond. Without a
# worker, the server keeps both waiting until this timeout passes.
WORKER_RESPONSE_TIMEOUT = timedelta(seconds=10)
# The Temporal server sends a run's tasks and queries to the sticky queue of
# its last worker until that queue has had no poll for 10 s, plus a margin.
STICKY_WINDOW_S = 11.0
# How long status and watch wait for a worker that is starting to send its
# first poll. An estimate: the worker polls as soon as it has connected.
POLLER_GRACE_S = 3.0
# A schema error for a value that must be a string, in the two wordings of
# helm's JSON schema libraries: "got number, want string" and "Expected:
# string, given: integer". NOTE: matched by text, so other wordings get no hint.
SCHEMA_STRING_ERROR = re.compile(
    r"got (number|integer|boolean|null), want string"
    r"|Expected: string, given: (number|integer|boolean|null)"
)


def _needs_attention(status: AnyStatus) -> bool:
    if isinstance(status, RollbackStatus):
        return False  # A rollback has no phase that waits for retry.
    return any(r.state is PhaseState.WAITING_FOR_RETRY for r in status.phases)


def rejected_request(destroy: bool, error_type: str | None) -> bool:
    """Tell whether a run that failed with error_type rejected its request.

    A destroy also rejects it in its first step, with the types of
    contracts.DESTROY_REJECTED_TYPES. Such runs show state invalid.
    """
    if error_type in contracts.REJECTED_REQUEST_TYPES:
        return True
    return destroy and error_type in contracts.DESTROY_REJECTED_TYPES


def outcome_code(status: AnyStatus, error_type: str | None) -> int:
    """Return the exit code for a run's status and its failure's error type."""
    if status.state == "succeeded":
        return EXIT_OK
    destroy = isinstance(status, DestroyStatus)
    if status.state == "invalid" or rejected_request(destroy, error_type):
        return EXIT_USAGE
    return EXIT_FAILED


def start_attributes(
    settings: TemporalSettings, release: str, namespace: str
) -> TypedSearchAttributes | None:
    if not settings.search_attributes:
        return None
    return TypedSearchAttributes(
        [
            SearchAttributePair(RELEASE_ATTRIBUTE, release),
            SearchAttributePair(NAMESPACE_ATTRIBUTE, namespace),
            SearchAttributePair(PHASE_ATTRIBUTE, "validating"),
        ]
    )


def resolve_id(args: argparse.Namespace) -> str:
    if args.workflow_id:
        return str(args.workflow_id)
    if args.release and args.namespace:
        return workflow_id_for(args.namespace, args.release)
    raise CliError("give a workflow id, or --release and --namespace", EXIT_USAGE)


async def query_status(
    handle: WorkflowHandle[Any, Any], model: StatusModel, running: bool
) -> AnyStatus:
    """Query the run's status; for a running run, query again once a second
    while the failed queries were sent within the server's sticky window.

    The server sends a run's query to the sticky task queue of the worker
    that ran it last, until that queue has had no poll for 10 s
    (stickyPollerUnavailableWindow in the Temporal server's matching engine).
    So after a worker was killed, a query in that time times out or fails,
    although a new worker polls the normal queue. The query is sent again,
    once a second, until one is sent after that window.
    """
    started = time.monotonic()
    while True:
        sent = time.monotonic()
        try:
            return await fetch_status(handle, model, WORKER_RESPONSE_TIMEOUT)
        except RPCError as error:
            if error.status is RPCStatusCode.NOT_FOUND or not running:
                raise
            if sent - started > STICKY_WINDOW_S:
                raise
        await asyncio.sleep(1.0)


async def cmd_status(client: Client, args: argparse.Namespace, console: Console) -> int:
    # describe first, then ask that run only: a new run of the same id that
    # starts meanwhile is not mixed in.
    description = await client.get_workflow_handle(resolve_id(args)).describe()
    handle = client.get_workflow_handle(description.id, run_id=description.run_id)
    model = status_model(handle.id, description.workflow_type)
    info = description.raw_description.workflow_execution_info
    running = info.status == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING
    status = await recorded_status(client, description, model)
    if status is None:
        try:
            status = await worker_status(client, handle, info, model, running)
        except RunEndedUnqueried as unqueried:
            return await show_ended_unqueried(
                handle, info, model, args, console, unqueried.note
            )
    # A run that ended, also between describe and the query, gets Temporal's
    # end state where the workflow recorded none (terminated, timed out, or
    # failed before the workflow recorded why), and its failure's error type.
    ended = not running or status.state in ENDED_STATES
    error_type = None
    if ended and status.state != "succeeded":
        status, error_type = await ended_status(handle, info.status, status)
    live = await live_statuses(client, handle) if running else None
    if args.json:
        data = status.model_dump(mode="json")
        if live is not None and not isinstance(status, RollbackStatus):
            # What the running waits saw last, by object, as the table shows it,
            # and the error of a retried attempt.
            data["live"] = {k: v for k, v in live.items() if k != "__attempt__"}
            if "__attempt__" in live:
                data["last_attempt_error"] = live["__attempt__"]
        print(json.dumps(with_error_type(data, error_type)))
    else:
        console.print(status_view(status, live))
        lines = [status.message]
        if isinstance(status, RollbackStatus):
            lines.append(status.migration_note)
        if error_type:
            lines.append(f"error type: {error_type}")
        for line in lines:
            if line:
                console.print(line, highlight=False)
    # A run that ended without succeeding and a phase that waits for retry
    # exit as start --follow does.
    if _needs_attention(status):
        return EXIT_FAILED
    if ended:
        return outcome_code(status, error_type)
    return EXIT_OK


class RunEndedUnqueried(Exception):
    """A run that has ended, whose status query no worker responded to."""

    def __init__(self, note: str) -> None:
        super().__init__(note)
        self.note = note


async def worker_status(
    client: Client,
    handle: WorkflowHandle[Any, Any],
    info: WorkflowExecutionInfo,
    model: StatusModel,
    running: bool,
) -> AnyStatus:
    """Query the run's status from a worker.

    Raise CliError (exit 5) for a running run that no worker responds to, and
    RunEndedUnqueried, with the reason, for a run that has ended.
    """
    # A query needs a worker, also for a run that has ended. Without one, each
    # query times out after WORKER_RESPONSE_TIMEOUT, so check for one first.
    if not await worker_polls(client, info.task_queue):
        if running:
            raise no_worker_error(
                f"{no_poller(info.task_queue)}, so no worker responds to the "
                f"status query of {handle.id}",
                info.task_queue,
            )
        raise RunEndedUnqueried(unqueried_note(info.task_queue))
    try:
        return await query_status(handle, model, running)
    except RPCError as error:
        if error.status is RPCStatusCode.NOT_FOUND:
            raise
        if running:
            raise no_worker_error(
                f"the status query of {handle.id} failed: {error.message}",
                info.task_queue,
            ) from None
        raise RunEndedUnqueried(query_failed_note(error, info.task_queue)) from None


# The ends of a run whose last status the run itself carries: the result of a
# completed run, the failure details of a failed one (workflows.control's
# run_failed).
RECORDED_ENDS = (
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_COMPLETED,
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_FAILED,
)


async def recorded_status(
    client: Client, description: WorkflowExecutionDescription, model: StatusModel
) -> AnyStatus | None:
    """Return the last status that an ended run recorded without a worker: in
    its result, in the failure that ended it, or in its memo once a cancel
    request ended it; None when it recorded none."""
    execution = description.raw_description.workflow_execution_info.status
    if execution in RECORDED_ENDS:
        ended = client.get_workflow_handle(description.id, run_id=description.run_id)
        return await result_status(ended, model)
    if execution != WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_CANCELED:
        return None
    stored = await description.memo_value(contracts.STATUS_MEMO, None)
    try:
        status: AnyStatus = model.model_validate(stored)
    except ValidationError:
        return None
    return status


async def result_status(
    handle: WorkflowHandle[Any, Any], model: StatusModel
) -> AnyStatus | None:
    """Return the last status that an ended run recorded, or None when it
    recorded none of that shape.

    The workflows return their last status, and attach it to the failure that
    ends a failed run, so the phases of an ended run show without a worker and
    without a query. Runs that failed before that change, or that were
    canceled, terminated or timed out, carry none. handle must name the run by
    its run id.
    """
    try:
        result = await handle.result(follow_runs=False)
    except WorkflowFailureError as failure:
        cause = failure.cause
        if not isinstance(cause, ApplicationError) or not cause.details:
            return None
        result = cause.details[0]
    try:
        status: AnyStatus = model.model_validate(result)
    except ValidationError:
        return None
    return status


async def show_ended_unqueried(
    handle: WorkflowHandle[Any, Any],
    info: WorkflowExecutionInfo,
    model: StatusModel,
    args: argparse.Namespace,
    console: Console,
    note: str,
) -> int:
    """Print how an ended run ended, from Temporal alone, with the note on
    why no worker responded to its status query; return the exit code."""
    state, message, error_type = await ended_outcome(handle, info.status)
    rejected = rejected_request(model is DestroyStatus, error_type)
    if rejected:
        # The workflow showed such a run as invalid, which only its query
        # would return.
        state = "invalid"
    outcome = {"workflow_id": handle.id, "state": state, "message": message}
    _print(
        args,
        console,
        with_error_type({**outcome, "phases": None}, error_type),
        f"{handle.id}: {state}{type_suffix(error_type)}",
    )
    if not args.json:
        console.print(f"{message}\n{note}" if message else note, highlight=False)
    if state == "succeeded":
        return EXIT_OK
    return EXIT_USAGE if rejected else EXIT_FAILED


async def ended_outcome(
    handle: WorkflowHandle[Any, Any], execution: WorkflowExecutionStatus.ValueType
) -> tuple[str, str | None, str | None]:
    """Return how a run that has ended ended, from Temporal: its state, the
    failure's message and the failure's error type (None when it has none)."""
    state = ENDED_EXECUTION_STATES.get(execution, "ended")
    try:
        await handle.result(follow_runs=False)
    except WorkflowFailureError as failure:
        cause = failure.cause
        error_type = cause.type if isinstance(cause, ApplicationError) else None
        return state, str(getattr(cause, "message", "") or cause), error_type
    return state, None, None


async def ended_status(
    handle: WorkflowHandle[Any, Any],
    execution: WorkflowExecutionStatus.ValueType,
    status: AnyStatus,
) -> tuple[AnyStatus, str | None]:
    """Return the status of a run that has ended and its failure's error type.

    The state and message come from Temporal when the workflow recorded no
    end state itself.
    """
    state, message, error_type = await ended_outcome(handle, execution)
    if status.state not in ENDED_STATES:
        status = status.model_copy(
            update={"state": state, "message": message or status.message}
        )
    elif not status.message and message:
        # An invalid destroy or rollback records its state but no message.
        status = status.model_copy(update={"message": message})
    return status, error_type


async def cmd_watch(client: Client, args: argparse.Namespace, console: Console) -> int:
    return await follow(
        client, client.get_workflow_handle(resolve_id(args)), args, console
    )


def no_worker_error(failure: str, task_queue: str, then: str = "") -> CliError:
    """Return the error (exit 5) for a query or update that no worker handled.

    then is the command to run once a worker polls again, if any.
    """
    after = f", then run {then}" if then else ""
    return CliError(
        f"{failure}. It needs a worker on task queue {task_queue}: start one, "
        f"or check the worker's log{after}",
        EXIT_UNREACHABLE,
    )


def no_poller(task_queue: str) -> str:
    return f"no worker has polled task queue {task_queue} in the last 5 minutes"


def query_failed_note(error: RPCError, task_queue: str) -> str:
    return (
        f"the status query failed ({error.message}), so the phases are not "
        f"shown; a worker on task queue {task_queue} answers it"
    )


def unqueried_note(task_queue: str) -> str:
    return (
        f"{no_poller(task_queue)}, so the phases are not shown: a worker that "
        "polls it responds to the status query"
    )


async def worker_polls(client: Client, task_queue: str) -> bool:
    """Tell whether a worker polls task_queue for workflow tasks.

    The server lists a worker until 5 minutes after its last poll, so one that
    stopped less than 5 minutes ago still counts. A worker that started a
    moment ago gets POLLER_GRACE_S to send its first poll. Returns True also
    when the describe_task_queue call fails, so that the caller sends the
    query as before.
    """
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(
            name=task_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL
        ),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    deadline = time.monotonic() + POLLER_GRACE_S
    while True:
        try:
            response = await client.workflow_service.describe_task_queue(request)
        except RPCError:
            return True
        if response.pollers:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.5)


def already_ended_error(workflow_id: str, verb: str) -> CliError:
    return CliError(
        f"{workflow_id} has already ended, so there is nothing to {verb}; "
        f"`ventros-deploy status {workflow_id}` shows how it ended",
        EXIT_FAILED,
    )


def ended_error(workflow_id: str, verb: str, error: RPCError) -> Exception:
    """Return the error to raise for an update or signal the server rejected.

    An update or signal to a run that has ended fails as NOT_FOUND. main
    would report that as a missing deploy, so it gets its own message and
    exit code here.
    """
    if error.status is RPCStatusCode.NOT_FOUND and "completed" in error.message:
        return already_ended_error(workflow_id, verb)
    return error


async def execute_update(
    handle: WorkflowHandle[Any, Any], name: str, arg: Any, result_type: type
) -> Any:
    """Run an update and return its result.

    Raises CliError (exit 5) when no worker completes it within
    WORKER_RESPONSE_TIMEOUT.
    """
    timeout = WORKER_RESPONSE_TIMEOUT
    try:
        # The SDK repeats the update RPC until a worker accepts it, so
        # rpc_timeout alone does not bound the call.
        return await asyncio.wait_for(
            handle.execute_update(
                name, arg, result_type=result_type, rpc_timeout=timeout
            ),
            timeout.total_seconds(),
        )
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        description = await handle.describe()
        # The server keeps an update that no worker accepted: giving up here
        # does not withdraw it.
        raise CliError(
            f"the {name} update of {handle.id} timed out after "
            f"{timeout.total_seconds():.0f} s: no worker on task queue "
            f"{description.task_queue} accepted it. The server keeps it, so a "
            "worker that starts on that queue still receives it, unless the "
            "server restarts first, and applies it if the run still takes it. "
            "Start a worker, or check the worker's log; "
            f"`ventros-deploy status {handle.id}` then shows whether it applied",
            EXIT_UNREACHABLE,
        ) from None
    except RPCError as error:
        raise ended_error(handle.id, name, error) from None


async def cmd_retry(client: Client, args: argparse.Namespace, console: Console) -> int:
    handle = client.get_workflow_handle(resolve_id(args))
    try:
        phases = await execute_update(handle, "retry", args.phase, list[str])
    except WorkflowUpdateFailedError as error:
        raise CliError(f"retry rejected: {error.cause}", EXIT_FAILED) from None
    _print(args, console, {"retried": phases}, f"retrying {', '.join(phases)}")
    if args.follow:
        return await follow(client, handle, args, console)
    return EXIT_OK


async def send_abort_signal(handle: WorkflowHandle[Any, Any], reason: str) -> None:
    """Send the abort-signal signal, which the server stores without a worker.

    The run aborts once a worker next runs it. A rollback takes no abort, so
    it is rejected here as the abort update would reject it.
    """
    description = await handle.describe()
    if description.workflow_type == ROLLBACK_TYPE:
        raise CliError(
            f"abort rejected: {handle.id} is a rollback, and a rollback has "
            "no phase that waits for the user, so it takes no abort",
            EXIT_USAGE,
        )
    execution = description.raw_description.workflow_execution_info.status
    if execution != WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING:
        raise already_ended_error(handle.id, "abort")
    try:
        await handle.signal("abort-signal", reason)
    except RPCError as error:
        raise ended_error(handle.id, "abort", error) from None


async def cmd_abort(client: Client, args: argparse.Namespace, console: Console) -> int:
    handle = client.get_workflow_handle(resolve_id(args))
    if args.no_wait:
        await send_abort_signal(handle, args.reason)
        _print(
            args,
            console,
            {"aborted": handle.id},
            f"abort of {handle.id} requested: the worker stops a running phase, "
            "and finished phases stay as they are; `ventros-deploy status "
            f"{handle.id}` shows when the run has ended",
        )
        return EXIT_OK
    try:
        await execute_update(handle, "abort", args.reason, str)
    except WorkflowUpdateFailedError as error:
        # A rollback takes no abort: it has no phase that waits for the user.
        # A run that took a cancel request is ending, so that is no usage error.
        cause = error.cause
        canceling = (
            isinstance(cause, ApplicationError)
            and cause.type == contracts.BEING_CANCELED
        )
        code = EXIT_FAILED if canceling else EXIT_USAGE
        raise CliError(f"abort rejected: {cause}", code) from None
    # A running helm step is stopped before the run ends, which takes up
    # to the worker's heartbeat interval (5 s).
    try:
        await asyncio.wait_for(handle.result(), ABORT_WAIT_S)
    except WorkflowFailureError:
        pass
    except TimeoutError:
        raise CliError(
            f"abort of {handle.id} requested, but the run has not ended after "
            f"{ABORT_WAIT_S:.0f} s; check that a worker runs, then "
            f"`ventros-deploy status {handle.id}`",
            EXIT_FAILED,
        ) from None
    else:
        _print(
            args,
            console,
            {"aborted": None, "succeeded": handle.id},
            f"{handle.id} succeeded before the abort took effect",
        )
        return EXIT_OK
    _print(
        args,
        console,
        {"aborted": handle.id},
        f"aborted {handle.id}: a running phase is stopped, and finished phases "
        "stay as they are; the run has ended",
    )
    return EXIT_OK


def _print(
    args: argparse.Namespace, console: Console, data: dict[str, Any], text: str
) -> None:
    if args.json:
        print(json.dumps(data))
    else:
        console.print(text, highlight=False)


# -- rollback and destroy -------------------------------------------------------


async def deploy_request_of(client: Client, workflow_id: str) -> DeployRequest | None:
    """Return the request of the newest deploy with this id; None when none ran."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        async for event in handle.fetch_history_events():
            started = event.workflow_execution_started_event_attributes
            if started.workflow_type.name != WORKFLOW_TYPE:
                raise CliError(
                    f"{workflow_id} is a {started.workflow_type.name} workflow; "
                    "give the id of a deploy (deploy-<namespace>.<release>)",
                    EXIT_USAGE,
                )
            inputs = await client.data_converter.decode(started.input.payloads)
            # Laxly, as the workflow of a run recorded before the strict JSON
            # types or the namespace check took it: such a run deployed with it.
            if not inputs:
                return None
            return parse_request(inputs[0], lax=True, cluster_namespaces=True)
    except RPCError as error:
        if error.status is RPCStatusCode.NOT_FOUND:
            return None
        raise
    except InvalidRequestError:
        return None  # A deploy that failed validation deployed nothing.
    return None


async def lifecycle_target(
    client: Client, args: argparse.Namespace
) -> tuple[str, str, DeployRequest | None]:
    """Return the release, the namespace and their last deploy's request."""
    if args.workflow_id:
        deployed = await deploy_request_of(client, args.workflow_id)
        if deployed is None:
            raise CliError(
                f"no deploy found with id {args.workflow_id}; give --release and "
                "--namespace instead",
                EXIT_NOT_FOUND,
            )
        return deployed.release, deployed.namespace, deployed
    if args.release and args.namespace:
        deployed = await deploy_request_of(
            client, workflow_id_for(args.namespace, args.release)
        )
        if deployed is None:
            # Releases last deployed before the ids joined the names with a dot.
            # That id may be another release's (namespace a-b with release c
            # and namespace a with release b-c shared it), so its request must
            # name this release.
            legacy = await deploy_request_of(
                client, f"deploy-{args.namespace}-{args.release}"
            )
            if legacy and (legacy.release, legacy.namespace) == (
                args.release,
                args.namespace,
            ):
                deployed = legacy
        return args.release, args.namespace, deployed
    raise CliError(
        "give the deploy's workflow id, or --release and --namespace", EXIT_USAGE
    )


async def start_lifecycle(
    client: Client,
    settings: TemporalSettings,
    workflow_type: str,
    request: Any,
) -> WorkflowHandle[Any, Any]:
    """Start a rollback or destroy; one of each kind runs per release at a time."""
    attributes = None
    if settings.search_attributes:
        attributes = TypedSearchAttributes(
            [
                SearchAttributePair(RELEASE_ATTRIBUTE, request.release),
                SearchAttributePair(NAMESPACE_ATTRIBUTE, request.namespace),
            ]
        )
    try:
        return await client.start_workflow(
            workflow_type,
            request.model_dump(mode="json"),
            id=request.workflow_id,
            task_queue=settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=attributes,
        )
    except WorkflowAlreadyStartedError:
        raise CliError(
            f"{request.workflow_id} is already running. Follow it with "
            f"`ventros-deploy watch {request.workflow_id}`",
            EXIT_RUNNING,
        ) from None


async def cmd_rollback(
    client: Client,
    settings: TemporalSettings,
    args: argparse.Namespace,
    console: Console,
) -> int:
    release, namespace, deployed = await lifecycle_target(client, args)
    await reject_while_other_runs(client, "rollback", namespace, release)

    # The last deploy's chart, context and app timeout are the defaults.
    raw: dict[str, Any] = {"release": release, "namespace": namespace}
    kube_context = args.kube_context or (deployed.kube_context if deployed else None)
    if kube_context:
        raw["kube_context"] = kube_context
    if args.chart:
        raw["chart"] = {"path": args.chart}
    elif deployed:
        raw["chart"] = deployed.chart.model_dump(exclude_none=True)
    if args.to_version:
        raw["to_version"] = args.to_version
    timeout = args.timeout
    if timeout is None and deployed:
        timeout = deployed.timeouts.app
    if timeout is not None:
        raw["timeout_s"] = timeout
    try:
        request = parse_rollback_request(raw)
    except InvalidRequestError as error:
        raise CliError(str(error), EXIT_USAGE) from None

    handle = await start_lifecycle(client, settings, ROLLBACK_TYPE, request)
    if not args.json:
        console.print(f"started {handle.id}", highlight=False)
    if args.follow:
        return await follow(client, handle, args, console)
    try:
        status = RollbackStatus.model_validate(await handle.result())
    except WorkflowFailureError as error:
        cause = error.cause
        message = cause.message if isinstance(cause, ApplicationError) else str(error)
        rejected = (
            isinstance(cause, ApplicationError)
            and cause.type in contracts.REJECTED_REQUEST_TYPES
        )
        code = EXIT_USAGE if rejected else EXIT_FAILED
        raise CliError(f"rollback failed: {message}", code) from None

    if args.json:
        print(status.model_dump_json())
        return EXIT_OK
    for line in (status.message, status.migration_note):
        if line:
            console.print(line, highlight=False, soft_wrap=True)
    return EXIT_OK


def check_namespace_deletion(args: argparse.Namespace, namespace: str) -> None:
    """Raise CliError (exit 2) when destroy --delete-namespace names a
    namespace of the cluster's own, which the request check would reject."""
    if args.delete_namespace and cluster_namespace(namespace):
        raise CliError(
            f"--delete-namespace would delete namespace {namespace!r}, which "
            "belongs to the cluster (default, and names starting with 'kube-'): "
            "leave out --delete-namespace; the destroy still removes the release",
            EXIT_USAGE,
        )


async def cmd_destroy(
    client: Client,
    settings: TemporalSettings,
    args: argparse.Namespace,
    console: Console,
) -> int:
    release, namespace, deployed = await lifecycle_target(client, args)
    # A destroy by workflow id learns the namespace only here.
    check_namespace_deletion(args, namespace)
    await reject_while_other_runs(client, "destroy", namespace, release)

    raw: dict[str, Any] = {
        "release": release,
        "namespace": namespace,
        "force": args.force,
        "delete_data": args.delete_data,
        "delete_namespace": args.delete_namespace,
    }
    kube_context = args.kube_context or (deployed.kube_context if deployed else None)
    if kube_context:
        raw["kube_context"] = kube_context
    if args.drain_timeout is not None:
        raw["drain_timeout_s"] = args.drain_timeout
    if args.namespace_timeout is not None:
        raw["namespace_timeout_s"] = args.namespace_timeout
    try:
        request = parse_destroy_request(raw)
    except InvalidRequestError as error:
        raise CliError(str(error), EXIT_USAGE) from None

    handle = await start_lifecycle(client, settings, DESTROY_TYPE, request)
    if not args.follow:
        _print(
            args,
            console,
            {"workflow_id": handle.id},
            f"started {handle.id}; follow it with `ventros-deploy watch {handle.id}`",
        )
        return EXIT_OK

    if not args.json:
        console.print(f"started {handle.id}", highlight=False)
    return await follow(client, handle, args, console)


# -- entry point ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ventros-deploy",
        description="Deploy the Ventros CRM stack with the VentrosDeploy workflow.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_id(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "workflow_id",
            nargs="?",
            help="workflow id, for example deploy-ventros-crm.ventros-crm",
        )
        p.add_argument(
            "--release", help="release name (with --namespace, instead of the id)"
        )
        p.add_argument("--namespace", help="Kubernetes namespace of the release")
        p.add_argument("--json", action="store_true", help="print JSON for scripts")

    start = sub.add_parser("start", help="start a deploy and print its workflow id")
    start.add_argument("--release", help="Helm release name (default ventros-crm)")
    start.add_argument("--namespace", help="Kubernetes namespace (default ventros-crm)")
    start.add_argument(
        "--chart",
        help="chart folder, relative to the worker's chart root (default chart)",
    )
    start.add_argument("--values", help="YAML file of chart values")
    start.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="one chart value, read as YAML where that keeps its text "
        "(3 is a number, 00123 a string); repeatable",
    )
    start.add_argument(
        "--set-string",
        action="append",
        metavar="KEY=VALUE",
        help="one chart value, always a string; applied after --set; repeatable",
    )
    start.add_argument(
        "--app-version", help="app version: the image tag and the migration Job's name"
    )
    start.add_argument("--kube-context", help="context in the worker's kubeconfig")
    start.add_argument(
        "--no-operators",
        action="store_true",
        help="use operators already in the cluster (install_operators false)",
    )
    start.add_argument("--request", help="JSON file with the whole deploy request")
    start.add_argument(
        "--follow",
        action="store_true",
        help="show a live phase table until the deploy ends",
    )
    start.add_argument("--json", action="store_true", help="print JSON for scripts")

    status = sub.add_parser("status", help="show each phase's state")
    with_id(status)
    watch = sub.add_parser(
        "watch", help="show a live phase table until the deploy ends"
    )
    with_id(watch)
    retry = sub.add_parser("retry", help="run the failed phase(s) again")
    with_id(retry)
    retry.add_argument("--phase", help="retry only this phase")
    retry.add_argument(
        "--follow", action="store_true", help="follow the deploy afterwards"
    )
    abort = sub.add_parser(
        "abort",
        help="end a deploy or destroy as failed, stopping the phase that runs; "
        "finished phases stay as they are",
    )
    with_id(abort)
    abort.add_argument(
        "--reason",
        default="aborted with ventros-deploy abort",
        help="reason recorded in the workflow",
    )
    abort.add_argument(
        "--no-wait",
        action="store_true",
        help="return once the abort is accepted, without waiting for the run to end",
    )
    add_lifecycle_parsers(sub, with_id)
    return parser


def seconds_between(low: int, high: int) -> Callable[[str], int]:
    """Return an argparse type for whole seconds from low to high."""

    def parse(text: str) -> int:
        try:
            seconds = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected whole seconds, got {text!r}"
            ) from None
        if not low <= seconds <= high:
            raise argparse.ArgumentTypeError(
                f"must be {low} to {high} seconds, got {seconds}"
            )
        return seconds

    return parse


def add_lifecycle_parsers(
    sub: Any, with_id: Callable[[argparse.ArgumentParser], None]
) -> None:
    rollback = sub.add_parser(
        "rollback",
        help="return the app and the base release to the previous app version; "
        "database migrations are not undone",
    )
    with_id(rollback)
    rollback.add_argument(
        "--to-version", help="app version to return to (default: the previous one)"
    )
    rollback.add_argument(
        "--chart", help="chart folder that renders the app (default: the deploy's)"
    )
    rollback.add_argument("--kube-context", help="context in the worker's kubeconfig")
    rollback.add_argument(
        "--timeout",
        type=seconds_between(TIMEOUT_MIN_S, TIMEOUT_MAX_S),
        help=f"seconds the rollout may take, {TIMEOUT_MIN_S} to {TIMEOUT_MAX_S} "
        "(default: the deploy's app timeout)",
    )
    rollback.add_argument(
        "--follow",
        action="store_true",
        help="show a live table until it ends (without it, rollback waits too, "
        "and prints the outcome)",
    )

    destroy = sub.add_parser(
        "destroy",
        help="remove the release in reverse deploy order; keeps PostgreSQL "
        "unless --delete-data",
    )
    with_id(destroy)
    destroy.add_argument(
        "--force",
        action="store_true",
        help="delete RabbitMQ without waiting for its queues to drain",
    )
    destroy.add_argument(
        "--delete-data",
        action="store_true",
        help="also delete the postgresql resource and the Redis volumes",
    )
    destroy.add_argument(
        "--delete-namespace",
        action="store_true",
        help="delete the namespace at the end (needs --delete-data)",
    )
    destroy.add_argument("--kube-context", help="context in the worker's kubeconfig")
    destroy.add_argument(
        "--drain-timeout",
        type=seconds_between(TIMEOUT_MIN_S, DRAIN_TIMEOUT_MAX_S),
        help="seconds to wait for the queues to drain, "
        f"{TIMEOUT_MIN_S} to {DRAIN_TIMEOUT_MAX_S} (default {DEFAULT_TIMEOUT_S})",
    )
    destroy.add_argument(
        "--namespace-timeout",
        type=seconds_between(TIMEOUT_MIN_S, TIMEOUT_MAX_S),
        help="seconds to wait for the namespace to be deleted, "
        f"{TIMEOUT_MIN_S} to {TIMEOUT_MAX_S} (default {DEFAULT_TIMEOUT_S})",
    )
    destroy.add_argument(
        "--follow", action="store_true", help="show a live table until it ends"
    )


async def run(args: argparse.Namespace) -> int:
    # Messages carry names and values from requests, so square brackets in them
    # are text, never Rich markup.
    console = PipeConsole(markup=False)
    try:
        settings = TemporalSettings()
    except ValidationError as error:
        raise CliError(
            f"invalid settings: {describe_settings_error(error)}", EXIT_USAGE
        ) from None
    if args.command == "start":
        # Fail on bad arguments and an invalid request before connecting.
        try:
            check_image_tag(parse_request(build_request(args)))
        except InvalidRequestError as error:
            raise CliError(str(error), EXIT_USAGE) from None
    if args.command == "destroy" and args.namespace:
        check_namespace_deletion(args, args.namespace)
    if args.command == "destroy" and args.delete_namespace and not args.delete_data:
        raise CliError(
            "--delete-namespace also deletes the PostgreSQL data in the namespace: "
            "add --delete-data, or leave out --delete-namespace",
            EXIT_USAGE,
        )
    if args.command in STARTING_COMMANDS and not key_ring_configured(settings):
        raise CliError(
            f"no payload key ring is configured, so `{args.command}` would store "
            "the request, with any secret values in it, in plain text in the "
            "Temporal history. Set VENTROS_DEPLOY_CODEC_KEYS_FILE to the key "
            "ring file the worker uses (python -m deployer.codec generate PATH "
            "creates one)",
            EXIT_USAGE,
        )
    try:
        client = await connect(settings)
    except KeyRingError as error:
        raise CliError(
            f"cannot load the payload key ring: {error}. Fix the file, or point "
            "VENTROS_DEPLOY_CODEC_KEYS_FILE to the key ring the worker uses",
            EXIT_USAGE,
        ) from None
    except TlsFileError as error:
        raise CliError(str(error), EXIT_USAGE) from None
    except RuntimeError as error:
        raise CliError(
            "cannot reach the bootstrap Temporal at "
            f"{settings.temporal_address}: {error}. "
            "Start it (make demo starts one) or set VENTROS_DEPLOY_TEMPORAL_ADDRESS",
            EXIT_UNREACHABLE,
        ) from None
    try:
        if args.command == "start":
            return await cmd_start(client, settings, args, console)
        if args.command == "status":
            return await cmd_status(client, args, console)
        if args.command == "watch":
            return await cmd_watch(client, args, console)
        if args.command == "retry":
            return await cmd_retry(client, args, console)
        if args.command == "rollback":
            return await cmd_rollback(client, settings, args, console)
        if args.command == "destroy":
            return await cmd_destroy(client, settings, args, console)
        return await cmd_abort(client, args, console)
    except RPCError as error:
        if error.status is RPCStatusCode.NOT_FOUND:
            raise CliError(
                f"no deploy found: {error.message}", EXIT_NOT_FOUND
            ) from None
        raise
    except WorkflowQueryFailedError as error:
        raise CliError(
            f"the status query failed in the worker: {error}. Its log has the "
            "cause, for example a workflow change that an older run cannot replay",
            EXIT_FAILED,
        ) from None
    except NoKeyRingError as error:
        raise CliError(
            f"{error}. Set VENTROS_DEPLOY_CODEC_KEYS_FILE to the key ring file "
            "the worker uses",
            EXIT_USAGE,
        ) from None
    except PayloadDecryptionError as error:
        raise CliError(
            f"cannot decrypt the deploy's data: {error}. Set "
            "VENTROS_DEPLOY_CODEC_KEYS_FILE to the key ring the worker uses",
            EXIT_USAGE,
        ) from None


class PipeConsole(Console):
    """A rich Console that lets a closed standard output end the command with
    EXIT_PIPE_CLOSED: rich's own handler exits 1, the code of a failed run."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = asyncio.run(run(args))
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
        code = error.code
    except BrokenPipeError:
        # Later writes to the closed pipe would fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_PIPE_CLOSED
    # The SDK's native client thread can still call into Python while the
    # interpreter finalizes, which aborts the process (exit -6) after the work
    # is done. Flush the output and leave without finalizing.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            code = EXIT_PIPE_CLOSED
    os._exit(code)
