"""``lmpipe``: materialize the pipeline into $LMPIPE_HOME, open its UI, use the model.

lmpipe run [--profile NAME | --config FILE] [--select SELECTION] [--stale] [--set ASSET.FIELD=VALUE ...]
lmpipe reproduce RUN_ID
lmpipe ui [--port PORT] [--profile NAME | --config FILE]
lmpipe generate --prompt TEXT [--model pretrained|sft|DIR] [--max-new-tokens N] [--temperature T] ...
lmpipe chat [--model sft|pretrained|DIR] [--system TEXT] [--max-new-tokens N] [--temperature T] ...
lmpipe export OUT_DIR [--model pretrained|sft|DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from lmcore.cpu import pin_cpu_dispatch
from pipelines.home import PROJECT_ROOT, HomeError, home_error, prepare_home, remove_stale_staging_dirs

INTERRUPTED = 130
"""The exit code of a run that Ctrl-C or SIGTERM stopped (the shell's 128 + SIGINT); it is marked canceled."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmpipe", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize assets (default: all) into $LMPIPE_HOME")
    src = run.add_mutually_exclusive_group()
    src.add_argument("--profile", default=None, help="packaged profile name (default: demo)")
    src.add_argument("--config", default=None, help="YAML file in the profile format")
    run.add_argument("--select", default="*", help="Dagster asset selection, e.g. 'group:data' or 'tokenizer+'")
    run.add_argument("--stale", action="store_true", help="only what is missing or stale (code, config, data)")
    run.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="ASSET.FIELD=VALUE",
        help="override one profile field (repeatable; dotted FIELD for nested config, YAML VALUE),\n"
        "e.g. --set tokenizer.vocab_size=280 --set pretrained_model.train.lr=0.002",
    )
    rep = sub.add_parser("reproduce", help="re-run a past run's selection with the same config")
    rep.add_argument("run_id", help="run id (or a unique prefix)")
    ui = sub.add_parser("ui", help="start the Dagster UI on 127.0.0.1 against $LMPIPE_HOME")
    ui.add_argument("--port", type=int, default=3000)
    ui_src = ui.add_mutually_exclusive_group()
    ui_src.add_argument("--profile", default=None, help="packaged profile the code location runs (default: demo)")
    ui_src.add_argument("--config", default=None, help="YAML file in the profile format, instead of --profile")
    _model_commands(sub)
    return p


def _model_commands(sub: Any) -> None:
    """``generate``, ``chat`` and ``export`` (run by ``pipelines.use_model``)."""
    from lmcore.finetune.converse import ChatConfig
    from lmcore.model.generate import GenerationConfig
    from pipelines.use_model import MODEL_HELP

    gen = sub.add_parser("generate", help="continue a prompt with a trained model (default: pretrained)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--model", default="pretrained", help=MODEL_HELP)
    gen.add_argument("--max-new-tokens", type=int, default=100)
    _config_flags(gen, GenerationConfig)
    chat = sub.add_parser(
        "chat",
        help="a ChatML conversation with a trained model (default: sft), one user turn per line of stdin;\n"
        "an empty line, /exit or end of input ends it",
    )
    chat.add_argument("--model", default="sft", help=MODEL_HELP)
    _config_flags(chat, ChatConfig)
    _config_flags(chat, GenerationConfig)
    exp = sub.add_parser("export", help="write a trained model (default: pretrained) in Hugging Face format")
    exp.add_argument("out_dir")
    exp.add_argument("--model", default="pretrained", help=MODEL_HELP)


def _config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of the config dataclass ``cls`` (``--top-k``, ``--no-repeat-ngram-size``, ...), with
    its default and docstring (for ``GenerationConfig``: the same decoding as the evaluation's unless a flag says
    otherwise); ``none`` for an optional one."""
    import dataclasses
    import typing

    from assets.config import field_docs

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))

        def parse(text: str, kind: type = kind) -> object:
            return None if text.lower() == "none" else kind(text)

        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=parse,
            default=f.default,
            help=f"{field_docs(cls).get(f.name, '')} (default: {f.default})",
        )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        pin_cpu_dispatch()  # before any torch kernel: this run computes what it computes on any CPU (lmcore.cpu)
        home = prepare_home()
    except (HomeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "ui":
        if args.profile or args.config:  # the code location's profile: every launch path in the UI runs it
            os.environ["LMPIPE_PROFILE"] = args.profile or os.path.abspath(args.config)
        return _ui(args.port)
    if args.command in ("generate", "chat", "export"):
        from pipelines.use_model import COMMANDS

        return COMMANDS[args.command](args)
    if args.command == "reproduce":
        return _reproduce(args)
    return _run(args, home)


def ui_command(port: int) -> list[str]:
    """``dg dev`` for this project (webserver and daemon) with this interpreter's environment, so
    ``.venv/bin/lmpipe ui`` works without the venv on PATH."""
    import shutil
    from pathlib import Path

    dg = shutil.which("dg", path=str(Path(sys.executable).parent)) or shutil.which("dg") or "dg"
    return [
        dg,
        "dev",
        "--use-active-venv",
        "--target-path",
        str(PROJECT_ROOT),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def _ui(port: int) -> int:
    cmd = ui_command(port)
    os.chdir(PROJECT_ROOT)
    if sys.prefix != sys.base_prefix:  # this interpreter's venv, as activating it would say (dg checks it)
        os.environ["VIRTUAL_ENV"] = sys.prefix
    os.execv(cmd[0], cmd)
    return 1  # not reached


def _run(args: argparse.Namespace, home: Any) -> int:
    import json
    import warnings

    import dagster as dg
    from rich.console import Console
    from rich.markup import escape

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    from assets.stage import SET_TAG
    from pipelines.definitions import build_definitions, left_out
    from pipelines.profile import apply_overrides, load_profile
    from pipelines.runner import PROFILE_TAG, observe_corpus, stale_keys

    console = Console(width=max(Console().width, 120))
    try:
        profile = apply_overrides(load_profile(args.profile, args.config), args.sets)
        defs = build_definitions(profile)  # validates the profile as pydantic and Dagster's config both would
        graph = defs.resolve_asset_graph()
        keys = {k for k in dg.AssetSelection.from_string(args.select).resolve(graph) if graph.get(k).is_materializable}
        # optional assets the profile does not configure run only when the selection names them
        keys -= {dg.AssetKey(name) for name in left_out(profile) if name not in args.select}
    except (ValueError, FileNotFoundError, dg.DagsterError) as exc:
        # escaped: values such as [a, b] are not markup; unwrapped, so each path stays on one line
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return 2
    if not keys:
        console.print(f"[red]error:[/red] selection {args.select!r} matches no asset")
        return 2
    if args.stale:  # against the corpus as it is now; the run below need not observe it again
        observe_corpus(dg.DagsterInstance.get(), defs)
        reasons = stale_keys(dg.DagsterInstance.get(), defs, keys)
        for key in sorted(keys):
            console.print(f"  {key.to_user_string():20} {reasons.get(key, '[green]up to date[/green]')}")
        keys = set(reasons)
        if not keys:
            console.print("everything selected is up to date; nothing to run")
            return 0
    sets = "".join(f" --set {escape(s)}" for s in profile.overrides)
    console.print(f"lmpipe: profile [bold]{profile.name}[/bold]{sets}, {len(keys)} assets, home {home}")
    names = {k.to_user_string() for k in keys}
    tags = {"lmpipe/profile": profile.name, "lmpipe/select": args.select, PROFILE_TAG: json.dumps(profile.assets)}
    if profile.overrides:  # reproduce copies lmpipe/* tags, so a reproduced run carries it too
        tags[SET_TAG] = json.dumps(list(profile.overrides))
    return _execute(console, home, defs, keys, profile.run_config(names), tags, observe=not args.stale)


def _execute(console: Any, home: Any, defs: Any, keys: set, run_config: dict, tags: dict, *, observe: bool) -> int:
    """Clean up after killed runs, then run; a full or read-only home is an error naming it (exit 1)."""
    import dagster as dg
    from rich.markup import escape

    from pipelines.runner import execute, fail_dead_runs, interrupted, observe_for

    try:
        for path in remove_stale_staging_dirs(home):
            console.print(f"removed {escape(str(path))}, left by a killed run", soft_wrap=True, highlight=False)
        for run in fail_dead_runs(dg.DagsterInstance.get()):
            console.print(
                f"[yellow]marked run {run.run_id[:8]} failed[/yellow]: it was still STARTED, but the process that ran "
                "it is gone (killed?); what it had published is kept",
                soft_wrap=True,
            )
        if observe:
            observe_for(dg.DagsterInstance.get(), defs, keys)
        result = execute(console, defs, keys, run_config, tags)
    except Exception as exc:
        if (error := home_error(exc, home)) is None:
            raise
        console.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)
        return 1
    return 0 if result.success else INTERRUPTED if interrupted(result) else 1


def _reproduce(args: argparse.Namespace) -> int:
    import json

    import dagster as dg
    from rich.console import Console

    from pipelines.definitions import build_definitions
    from pipelines.profile import Profile
    from pipelines.runner import PROFILE_TAG, data_versions, execute, observe_for

    console = Console(width=max(Console().width, 120))
    instance = dg.DagsterInstance.get()
    runs = [r for r in instance.get_runs() if r.run_id.startswith(args.run_id)]
    if len(runs) != 1:
        console.print(f"[red]error:[/red] {len(runs)} runs match {args.run_id!r}; give more of the run id")
        return 2
    old = runs[0]
    if not old.asset_selection:
        console.print(f"[red]error:[/red] run {old.run_id} materialized no assets")
        return 2
    if PROFILE_TAG not in old.tags:
        console.print(
            f"[red]error:[/red] run {old.run_id} does not record its profile (tag {PROFILE_TAG}): it was not "
            "started by lmpipe run; re-launch it from the UI instead"
        )
        return 2
    # the code location the run had: its profile, --set overrides applied, as recorded
    profile = Profile(
        name=old.tags.get("lmpipe/profile", "reproduced"), description="", assets=json.loads(old.tags[PROFILE_TAG])
    )
    tags = {**{k: v for k, v in old.tags.items() if k.startswith("lmpipe/")}, "lmpipe/reproduces": old.run_id}
    run_config = {k: v for k, v in old.run_config.items() if k != "loggers"}
    defs, keys = build_definitions(profile), set(old.asset_selection)
    observe_for(instance, defs, keys)
    result = execute(console, defs, keys, run_config, tags)
    before, after = data_versions(instance, old.run_id), data_versions(instance, result.run_id)
    same = sorted(k for k in after if before.get(k) == after[k])
    differ = sorted(k for k in after if k in before and before[k] != after[k])
    console.print(f"identical data versions: {', '.join(same) or 'none'}")
    if differ:
        console.print(f"[yellow]different data versions:[/yellow] {', '.join(differ)}")
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
