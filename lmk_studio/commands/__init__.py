"""CLI command handlers, one module per area so the CLI never imports torch or Qt needlessly.

Owners: project_cmds (new, info), io_cmds (import, export), evaluate_cmd, demo_cmd,
train_cmds (train, predict), exemplar_cmd (suggest-exemplar), corrections_cmd
(suggest-corrections). Each `cmd_*` takes the parsed
argparse namespace and returns an exit code.
"""

from __future__ import annotations

import argparse


def cmd_new(args: argparse.Namespace) -> int:
    from lmk_studio.commands.project_cmds import cmd_new as f

    return f(args)


def cmd_import(args: argparse.Namespace) -> int:
    from lmk_studio.commands.io_cmds import cmd_import as f

    return f(args)


def cmd_export(args: argparse.Namespace) -> int:
    from lmk_studio.commands.io_cmds import cmd_export as f

    return f(args)


def cmd_info(args: argparse.Namespace) -> int:
    from lmk_studio.commands.project_cmds import cmd_info as f

    return f(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from lmk_studio.commands.demo_cmd import cmd_demo as f

    return f(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from lmk_studio.commands.evaluate_cmd import cmd_evaluate as f

    return f(args)


def cmd_train(args: argparse.Namespace) -> int:
    from lmk_studio.commands.train_cmds import cmd_train as f

    return f(args)


def cmd_predict(args: argparse.Namespace) -> int:
    from lmk_studio.commands.train_cmds import cmd_predict as f

    return f(args)


def cmd_suggest_exemplar(args: argparse.Namespace) -> int:
    from lmk_studio.commands.exemplar_cmd import cmd_suggest_exemplar as f

    return f(args)


def cmd_suggest_corrections(args: argparse.Namespace) -> int:
    from lmk_studio.commands.corrections_cmd import cmd_suggest_corrections as f

    return f(args)
