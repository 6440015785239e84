"""``--cfg`` / ``--info`` on a command line Hydra would refuse: show what the user meant, with a note.

Hydra prints the config of one job only. ``python train.py -m <sweep> --cfg hydra`` (how one checks
a SLURM submission before sending it) stops with "Only one of --run, --multirun, --cfg ... can be
specified", and ``--cfg hydra --resolve`` fails on launcher settings that refer to the job's config
(``hydra.launcher.nodes: ${trainer.num_nodes}``), which Hydra removes before resolving. This module
rewrites such a command into the one that shows the first job's config, and says so on stderr.
"""

from __future__ import annotations

import shlex
import sys

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

MULTIRUN_FLAGS = ("-m", "--multirun")
# Hydra flags that take a value in the next token (when not written as --flag=value).
VALUE_FLAGS = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
               "--config-dir", "-cd", "--experimental-rerun")


class InspectionError(Exception):
    """The command cannot be turned into a single job's; the message says which value to fix."""


def _classify(tokens: list[str]) -> list[tuple[str, str]]:
    """Each token with its role: ``flag``, ``value`` (of the flag before it) or ``override``."""
    roles: list[tuple[str, str]] = []
    expects_value = False
    for token in tokens:
        if expects_value:
            roles.append((token, "value"))
            expects_value = False
        elif token.startswith("-"):
            roles.append((token, "flag"))
            expects_value = token in VALUE_FLAGS
        else:
            roles.append((token, "override"))
    return roles


def _flag_values(roles: list[tuple[str, str]]) -> dict[str, str | None]:
    """Flag name -> its value (``--cfg hydra``, ``--cfg=hydra``) or None."""
    values: dict[str, str | None] = {}
    for index, (token, role) in enumerate(roles):
        if role != "flag":
            continue
        name, has_value, value = token.partition("=")
        following = roles[index + 1] if index + 1 < len(roles) else ("", "")
        values[name] = value if has_value else following[0] if following[1] == "value" else None
    return values


def first_job_override(token: str) -> str:
    """``key=a,b`` -> ``key=a``: the override of the sweep's first job (others unchanged)."""
    try:
        override = OverridesParser.create().parse_override(token)
    except HydraException:
        return token  # Hydra reports the syntax error itself
    if not override.is_sweep_override():
        return token
    try:
        first = next(iter(override.sweep_string_iterator()))
    except HydraException:
        raise InspectionError(
            f"{override.get_key_element()}: Hydra shows the config of one job and cannot enumerate "
            f"'{token.partition('=')[2]}'; give one value to see that job's config"
        ) from None
    return f"{override.get_key_element()}={first}"


def _with_cfg_all(roles: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``--cfg hydra`` (any spelling) -> ``--cfg all``."""
    result: list[tuple[str, str]] = []
    for index, (token, role) in enumerate(roles):
        name = token.partition("=")[0]
        if role == "flag" and name in ("--cfg", "-c"):
            result.append((f"{name}=all", "flag") if "=" in token else (token, "flag"))
        elif role == "value" and roles[index - 1][0] in ("--cfg", "-c"):
            result.append(("all", "value"))
        else:
            result.append((token, role))
    return result


def single_job_command(argv: list[str]) -> tuple[list[str], str | None]:
    """The command line to run instead of ``argv`` and a note that explains the change (None: as is)."""
    roles = _classify(list(argv[1:]))
    flags = _flag_values(roles)
    if not any(name in flags for name in ("--cfg", "-c", "--info", "-i")):
        return argv, None
    reasons: list[str] = []
    if any(name in flags for name in MULTIRUN_FLAGS):
        roles = [(token, role) for token, role in roles if token not in MULTIRUN_FLAGS]
        roles = [(first_job_override(token), role) if role == "override" else (token, role) for token, role in roles]
        reasons.append("Hydra shows the config of one job, not of a multirun (-m): this is the sweep's first job")
    if flags.get("--cfg", flags.get("-c")) == "hydra" and "--resolve" in flags:
        # Resolved within the whole config, the hydra node's references to the job's keys work.
        roles = _with_cfg_all(roles)
        if "--package" not in flags and "-p" not in flags:
            roles += [("--package", "flag"), ("hydra", "value")]
        reasons.append("hydra settings refer to the job's config (trainer.devices, ...), so they are resolved within it")
    if not reasons:
        return argv, None
    tokens = [token for token, _ in roles]
    command = shlex.join(["python", argv[0].rsplit("/", 1)[-1], *tokens])
    return [argv[0], *tokens], f"{'; '.join(reasons)}; showing: {command}"


def explain_inspection(argv: list[str]) -> list[str]:
    """``single_job_command`` for an entry point: the note on stderr, exit status 2 when it cannot help."""
    try:
        command, note = single_job_command(argv)
    except InspectionError as error:
        print(f"consparse: error: {error}", file=sys.stderr)
        sys.exit(2)
    if note:
        print(f"consparse: note: {note}", file=sys.stderr)
    return command
