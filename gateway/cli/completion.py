"""``eventbus completion bash|zsh|fish``: a shell completion script made from the parser.

The script is generated from the very ``argparse`` parser the command runs, so it completes
exactly the commands, subcommands, flags and flag choices that exist. Each script finds
where the command line is in the command tree the same way: it walks the words typed so
far, and a word that is a subcommand of the commands before it goes one level down. Then it
offers the choices of the flag just typed, else the flags of that command (after a ``-``),
else its subcommands.

Install (see docs/clients.md): ``eventbus completion bash > ~/.local/share/bash-completion/
completions/eventbus``; for zsh, a file ``_eventbus`` in a directory of ``$fpath``; for
fish, ``~/.config/fish/completions/eventbus.fish``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

SHELLS = ("bash", "zsh", "fish")


@dataclass(frozen=True, slots=True)
class Option:
    flags: tuple[str, ...]
    help: str
    takes_value: bool
    choices: tuple[str, ...]


@dataclass(slots=True)
class Command:
    """One node of the command tree: its subcommands (name -> help) and its options."""

    subcommands: dict[str, str] = field(default_factory=dict)
    options: list[Option] = field(default_factory=list)


def command_tree(parser: argparse.ArgumentParser) -> dict[str, Command]:
    """Every command by its path of words (``""``, ``"topics"``, ``"tenants keys create"``)."""
    tree: dict[str, Command] = {}

    def visit(path: str, node: argparse.ArgumentParser) -> None:
        command = tree.setdefault(path, Command())
        for action in node._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help or "" for a in action._choices_actions}
                for name, sub in action.choices.items():
                    command.subcommands[name] = helps.get(name, "")
                    visit(f"{path} {name}".strip(), sub)
            elif action.option_strings and action.help != argparse.SUPPRESS:
                command.options.append(
                    Option(
                        flags=tuple(action.option_strings),
                        help=(action.help or "").replace("%%", "%"),
                        takes_value=action.nargs != 0,
                        choices=tuple(str(c) for c in action.choices or ()),
                    )
                )

    visit("", parser)
    return tree


def _case(name: str, entries: dict[str, list[str]]) -> str:
    """A shell function that echoes the words of its first argument's entry."""
    lines = [f"_eventbus_{name}() {{", '    case "$1" in']
    for key, words in entries.items():
        if words:
            lines.append(f'        "{key}") echo "{" ".join(words)}" ;;')
    lines += ["    esac", "}"]
    return "\n".join(lines)


def _tables(tree: dict[str, Command]) -> str:
    """The subcommands, options and flag choices of each command, as shell functions
    bash and zsh both read."""
    subcommands = {path: list(c.subcommands) for path, c in tree.items()}
    options = {path: [f for o in c.options for f in o.flags] for path, c in tree.items()}
    choices = {
        f"{path} {flag}": list(o.choices)
        for path, c in tree.items()
        for o in c.options
        if o.choices
        for flag in o.flags
    }
    return "\n\n".join(
        [_case("subcommands", subcommands), _case("options", options), _case("choices", choices)]
    )


_BASH = """\
_eventbus() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local at="" word sub i words
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        for sub in $(_eventbus_subcommands "$at"); do
            if [[ $word == "$sub" ]]; then
                at=${at:+$at }$word
                break
            fi
        done
    done
    words=$(_eventbus_choices "$at $prev")
    if [[ -z $words ]]; then
        if [[ $cur == -* ]]; then
            words=$(_eventbus_options "$at")
        else
            words=$(_eventbus_subcommands "$at")
        fi
    fi
    mapfile -t COMPREPLY < <(compgen -W "$words" -- "$cur")
}
complete -o default -F _eventbus eventbus
"""

_ZSH = """\
_eventbus() {
    local at="" word sub i words
    for ((i = 2; i < CURRENT; i++)); do
        word=${words[i]}
        for sub in ${=$(_eventbus_subcommands "$at")}; do
            if [[ $word == "$sub" ]]; then
                at=${at:+$at }$word
                break
            fi
        done
    done
    local offered=$(_eventbus_choices "$at ${words[CURRENT-1]}")
    if [[ -z $offered ]]; then
        if [[ ${words[CURRENT]} == -* ]]; then
            offered=$(_eventbus_options "$at")
        else
            offered=$(_eventbus_subcommands "$at")
        fi
    fi
    if [[ -n $offered ]]; then
        compadd -- ${=offered}
    else
        _files
    fi
}

if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then
    _eventbus "$@"
else
    compdef _eventbus eventbus
fi
"""

_FISH_WALK = """\
function __eventbus_at --description 'is the command line at this eventbus command?'
    set -l tokens (commandline -opc)
    set -e tokens[1]
    set -l at ''
    for word in $tokens
        if contains -- $word (__eventbus_subcommands $at)
            set at (string trim -- "$at $word")
        end
    end
    test "$at" = "$argv[1]"
end
"""


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish(tree: dict[str, Command]) -> str:
    lines = ["function __eventbus_subcommands", "    switch $argv[1]"]
    for path, command in tree.items():
        if command.subcommands:
            lines.append(f"        case {_fish_quote(path)}")
            lines.append(f"            printf '%s\\n' {' '.join(command.subcommands)}")
    lines += ["    end", "end", "", _FISH_WALK, "complete -c eventbus -f"]
    for path, command in tree.items():
        when = f"-n {_fish_quote('__eventbus_at ' + _fish_quote(path))}"
        for name, help_text in command.subcommands.items():
            lines.append(f"complete -c eventbus {when} -a {name} -d {_fish_quote(help_text)}")
        for option in command.options:
            spec = [
                f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}"
                for flag in option.flags
            ]
            if option.choices:
                spec.append(f"-x -a {_fish_quote(' '.join(option.choices))}")
            elif option.takes_value:
                spec.append("-r")
            spec.append(f"-d {_fish_quote(option.help)}")
            lines.append(f"complete -c eventbus {when} {' '.join(spec)}")
    return "\n".join(lines) + "\n"


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    tree = command_tree(parser)
    head = f"# {shell} completion for eventbus, generated by `eventbus completion {shell}`.\n"
    if shell == "bash":
        return f"{head}\n{_tables(tree)}\n\n{_BASH}"
    if shell == "zsh":
        return f"#compdef eventbus\n{head}\n{_tables(tree)}\n\n{_ZSH}"
    return f"{head}\n{_fish(tree)}"


def add_completion_parser(commands: Any) -> None:
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or fish)",
        description="Prints a completion script for SHELL, made from this command's own "
        "parser. bash: eventbus completion bash > ~/.local/share/bash-completion/completions/"
        "eventbus (or source it from ~/.bashrc). zsh: eventbus completion zsh > a directory in "
        "$fpath as _eventbus. fish: eventbus completion fish > "
        "~/.config/fish/completions/eventbus.fish.",
    )
    completion.add_argument("shell", choices=SHELLS)
