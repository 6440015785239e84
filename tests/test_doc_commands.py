"""Every ``python train.py`` / ``python eval.py`` command the docs and config comments show is valid.

Commands come from fenced code blocks and inline code spans of README.md and docs/**/*.md, and from
comment lines of conf/**/*.yaml. Shell variables assigned earlier in the same block are expanded;
``<placeholder>`` overrides, ``...`` and ``S``-style stand-ins are left as they are or out, and the
rest must compose. A single run is composed as it is; a multirun (``-m``) as its sweeper would
launch it: the basic sweeper's first job, or the first job of every block of a block sweep
(``hydra/sweeper=blocks``), composed on the base config as Hydra composes sweep jobs. Flags that only
print (``--help``, ``--cfg``, ``--resolve``, ``--package``, ``--info``) are dropped. An eval.py command
must parse, and each key it changes must exist in the composed config.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from consparse.evaluate_run import parse_arguments
from consparse.inspect_command import VALUE_FLAGS, first_job_override
from consparse.sweeper import plan_sweep, skip_unavailable

REPO = Path(__file__).resolve().parents[1]
ENTRY = "python train.py"
EVAL_ENTRY = "python eval.py"
FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`(python (?:train|eval)\.py[^`]*)`")
ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
PLACEHOLDER = re.compile(r"<[^<>\n]*>")
# Hydra flags that print something (help, config, info) instead of running a job.
PRINTING_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--resolve", "--package", "-p", "--info", "-i")
MULTIRUN_FLAGS = ("-m", "--multirun")
SHELL_OPERATORS = ("|", "||", "&&", ";", "&", ")", ">", ">>")
BLOCKS_SWEEPER = "hydra_plugins.consparse_sweeper.blocks_sweeper.BlocksSweeper"


def _expand(line: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: variables.get(m.group(1), m.group(0)), line)


def _commands_in_block(block: str, variables: dict[str, str]) -> list[str]:
    """Each line of a shell block, continuation lines joined and variables set before expanded."""
    commands = []
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
        line = _expand(line.strip(), variables)
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = []  # not shell (prose, YAML): no assignment
        if words[:1] == ["export"]:
            words = words[1:]
        assignment = ASSIGNMENT.match(words[0]) if len(words) == 1 else None
        if assignment:
            variables[assignment.group(1)] = assignment.group(2)
        commands.append(line)
    return commands


def _commands_in_markdown(text: str) -> list[str]:
    variables: dict[str, str] = {}  # a page's blocks are one shell session
    commands = [command for block in FENCE.findall(text) for command in _commands_in_block(block, variables)]
    return commands + [_expand(span, variables) for span in INLINE.findall(FENCE.sub("", text))]


def _commands_in_yaml(text: str) -> list[str]:
    return [line.lstrip().lstrip("#").strip() for line in text.splitlines() if line.lstrip().startswith("#")]


def documented_commands() -> list[tuple[str, str]]:
    """``(where, command)`` for every train.py command shown to users, each command once."""
    found = [
        (path, command)
        for path in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
        for command in _commands_in_markdown(path.read_text())
    ]
    found += [
        (path, command)
        for path in sorted((REPO / "conf").rglob("*.yaml"))
        for command in _commands_in_yaml(path.read_text())
    ]
    commands: dict[str, str] = {}
    for path, command in found:
        starts = [start for start in (command.find(ENTRY), command.find(EVAL_ENTRY)) if start >= 0]
        if starts:
            commands.setdefault(command[min(starts):], str(path.relative_to(REPO)))
    return sorted((where, command) for command, where in commands.items())


def parse_command(command: str) -> tuple[bool, list[str]]:
    """(whether it is a multirun, its arguments as written) for ``python train.py ...`` / ``eval.py``."""
    arguments = command.split(None, 2)[2] if len(command.split(None, 2)) > 2 else ""
    lexer = shlex.shlex(PLACEHOLDER.sub("PLACEHOLDER", arguments), posix=True, punctuation_chars="|&;)>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    multirun, overrides, skip_value = False, [], False
    for token in lexer:
        if token in SHELL_OPERATORS:
            break
        if skip_value:
            skip_value = False
        elif token.startswith("-"):
            name = token.partition("=")[0]
            assert name in MULTIRUN_FLAGS + PRINTING_FLAGS, f"unknown flag {token} in {command!r}"
            multirun = multirun or name in MULTIRUN_FLAGS
            skip_value = name in VALUE_FLAGS and "=" not in token
        elif token != "..." and "PLACEHOLDER" not in token:
            overrides.append(token)
    return multirun, overrides


def _sweeper(overrides: list[str]) -> DictConfig:
    """``hydra.sweeper`` of the config these overrides compose (the test fixture leaves out ``hydra``)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True).hydra.sweeper


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def _on_top(base: list[str], job: list[str]) -> list[str]:
    """``base`` overrides with ``job``'s replacing those of the same key (as a sweep job applies them)."""
    replaced = {_key(override) for override in job}
    return [override for override in base if _key(override) not in replaced] + job


def check_eval_command(make_config, command: str) -> None:
    """The arguments parse (a placeholder run dir stands in) and every changed key exists."""
    _, arguments = parse_command(command)
    _, _, overrides = parse_arguments(arguments if any(a.startswith("run=") for a in arguments) else ["run=x", *arguments])
    cfg = make_config(fast=False)
    for override in overrides:
        key = override.partition("=")[0]
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        assert node is not None and leaf in node, f"{key} is not a key of the config"


def compose_jobs(make_config, command: str) -> int:
    """Compose the command's job(s) as train.py would launch them; returns how many were composed."""
    if command.startswith(EVAL_ENTRY):
        check_eval_command(make_config, command)
        return 1
    multirun, overrides = parse_command(command)
    if not multirun:
        make_config(*overrides, fast=False)
        return 1
    parser = OverridesParser.create()
    fixed = [o for o in overrides if not parser.parse_override(o).is_sweep_override()]
    sweeper = _sweeper(fixed)
    if sweeper.get("_target_") != BLOCKS_SWEEPER:
        make_config(*[first_job_override(o) for o in overrides], fast=False)
        return 1
    plan = plan_sweep(sweeper.params, sweeper.blocks, overrides, select=sweeper.select, optional=sweeper.optional)
    composed = []
    skip_unavailable(plan, lambda job: composed.append(make_config(*_on_top(fixed, job), fast=False)), sweeper.optional)
    return len(composed)


COMMANDS = documented_commands()


def test_the_docs_show_commands() -> None:
    places = {where for where, _ in COMMANDS}
    assert {"README.md", "docs/usage.md"} <= places and len(COMMANDS) > 20


def test_a_block_sweep_composes_every_block(make_config) -> None:
    """The narrowing override reaches only the block that has the key, as the sweeper applies it."""
    assert compose_jobs(make_config, "python train.py -m experiment=compare_mnist_mlp 'method.penalty=choice(0.1,1.0)'") > 3


def test_shell_variables_and_pipes_are_understood() -> None:
    block = 'D="dataset.root=../shared/data"\npython train.py -m method=l0 $D seed=0,1 --cfg job | head  # note\n'
    (command,) = [c for c in _commands_in_block(block, {}) if c.startswith(ENTRY)]
    assert parse_command(command) == (True, ["method=l0", "dataset.root=../shared/data", "seed=0,1"])


def test_eval_commands_are_checked(make_config) -> None:
    check_eval_command(make_config, "python eval.py run=<run dir> dataset.root=../shared/data evaluation.latency.threads=4")
    with pytest.raises(AssertionError, match="evaluation.no_such_key"):
        check_eval_command(make_config, "python eval.py run=<run dir> evaluation.no_such_key=1")


# The reproduction commands of docs/results and docs/methods are many; they run with the slow tests.
CASES = [
    pytest.param(where, command, id=f"{where}: {command}",
                 marks=[pytest.mark.slow] if where.startswith(("docs/results", "docs/methods")) else [])
    for where, command in COMMANDS
]


@pytest.mark.parametrize("where,command", CASES)
def test_documented_command_composes(make_config, where: str, command: str) -> None:
    assert compose_jobs(make_config, command) >= 1
