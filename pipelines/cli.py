"""``lmpipe``: run asset selections into the project's Dagster instance, or open its UI.

lmpipe run [--profile NAME | --config FILE] [--select SELECTION]
lmpipe ui [--port PORT]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from pipelines.home import PROJECT_ROOT, prepare_home


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmpipe", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize assets (default: all) into $LMPIPE_HOME")
    src = run.add_mutually_exclusive_group()
    src.add_argument("--profile", default=None, help="packaged profile name (default: demo)")
    src.add_argument("--config", default=None, help="YAML file in the profile format")
    run.add_argument("--select", default="*", help="Dagster asset selection, e.g. 'group:data' or 'tokenizer+'")
    ui = sub.add_parser("ui", help="start the Dagster UI on 127.0.0.1 against $LMPIPE_HOME")
    ui.add_argument("--port", type=int, default=3000)
    gen = sub.add_parser("generate", help="sample from the latest pretrained_model")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=100)
    gen.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--frequency-penalty", type=float, default=0.0)
    gen.add_argument("--presence-penalty", type=float, default=0.0)
    gen.add_argument("--seed", type=int, default=None)
    exp = sub.add_parser("export", help="write the latest pretrained_model in Hugging Face format")
    exp.add_argument("out_dir")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    home = prepare_home()
    if args.command == "ui":
        return _ui(args.port)
    if args.command in ("generate", "export"):
        return _use_model(args)
    return _run(args, home)


def _latest_checkpoint() -> str:
    import dagster as dg

    event = dg.DagsterInstance.get().get_latest_materialization_event(dg.AssetKey("pretrained_model"))
    if event is None or event.asset_materialization is None:
        raise FileNotFoundError("no pretrained_model yet in this LMPIPE_HOME; run `lmpipe run` first")
    return event.asset_materialization.metadata["artifact_path"].value


def _use_model(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lmcore.checkpoint import load_trained_model
    from lmcore.tokenizer import load_tokenizer

    try:
        path = _latest_checkpoint()
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model, meta = load_trained_model(path)
    tokenizer_path = Path(meta["tokenizer_path"])
    if args.command == "export":
        from lmcore.export import export_hf

        print(export_hf(model, tokenizer_path, Path(args.out_dir)))
        return 0
    from lmcore.generate import generate_text

    text = generate_text(
        model,
        load_tokenizer(tokenizer_path),
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        frequency_penalty=args.frequency_penalty,
        presence_penalty=args.presence_penalty,
        seed=args.seed,
    )
    print(args.prompt + text)
    return 0


def _ui(port: int) -> int:
    cmd = ["dagster", "dev", "-m", "pipelines.definitions", "-h", "127.0.0.1", "-p", str(port)]
    os.chdir(PROJECT_ROOT)
    os.execvp(cmd[0], cmd)
    return 1  # not reached


def _run(args: argparse.Namespace, home: Any) -> int:
    from rich.console import Console

    console = Console(width=max(Console().width, 120))
    import warnings

    import dagster as dg

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    from pipelines.definitions import ALL_ASSETS, defs
    from pipelines.profile import load_profile, validate_profile

    try:
        profile = load_profile(args.profile, args.config)
        validate_profile(profile, ALL_ASSETS)
        selection = dg.AssetSelection.from_string(args.select)
        keys = selection.resolve(defs.resolve_asset_graph())
    except (ValueError, FileNotFoundError, dg.DagsterError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    if not keys:
        console.print(f"[red]error:[/red] selection {args.select!r} matches no asset")
        return 2
    names = {k.to_user_string() for k in keys}
    console.print(f"lmpipe: profile [bold]{profile.name}[/bold], {len(keys)} assets, home {home}")
    job = defs.resolve_implicit_global_asset_job_def()
    start = time.monotonic()
    with _progress(console):
        result = job.execute_in_process(
            run_config={**profile.run_config(names), "loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            instance=dg.DagsterInstance.get(),
            asset_selection=list(keys),
            raise_on_error=False,
            tags={"lmpipe/profile": profile.name, "lmpipe/select": args.select},
        )
    _summary(console, result, time.monotonic() - start)
    return 0 if result.success else 1


class _progress:
    """A rich progress bar per asset, fed by assets.progress while the run executes in-process."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[tuple[str, str], Any] = {}

    def update(self, asset: str, what: str, done: int, total: int | None) -> None:
        key = (asset, what)
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(f"{asset}: {what}", total=total)
        self.bar.update(self.tasks[key], completed=done, total=total)

    def __enter__(self) -> _progress:
        from assets.progress import set_sink

        set_sink(self.update)
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        from assets.progress import set_sink

        set_sink(None)
        self.bar.__exit__(*exc)


def _summary(console: Any, result: Any, seconds: float) -> None:
    from rich.table import Table

    checks: dict[str, list[str]] = {}
    for check in result.get_asset_check_evaluations():
        mark = "[green]ok[/green]" if check.passed else "[red]FAILED[/red]"
        checks.setdefault(check.asset_key.to_user_string(), []).append(f"{check.check_name} {mark}")
    table = Table(title=f"run {result.run_id[:8]} {'succeeded' if result.success else 'FAILED'} in {seconds:.1f}s")
    table.add_column("asset", no_wrap=True)
    table.add_column("figures")
    table.add_column("checks")
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        name = mat.asset_key.to_user_string()
        figures = ", ".join(
            f"{k}={v.value:,}" if isinstance(v.value, int) else f"{k}={v.value:.4g}"
            for k, v in mat.metadata.items()
            if isinstance(v.value, (int, float)) and not isinstance(v.value, bool)
        )
        table.add_row(name, figures, "\n".join(checks.get(name, [])))
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            message = error.cause.message if error and error.cause else (error.message if error else "")
            table.add_row(f"[red]{event.step_key}[/red]", f"[red]failed:[/red] {message.strip()}", "")
    console.print(table)
    if not result.success:
        console.print("[red]run failed[/red]; the full log is in the Dagster UI (lmpipe ui).")


if __name__ == "__main__":
    sys.exit(main())
