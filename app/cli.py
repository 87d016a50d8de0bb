"""The ``memfactory`` command line."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from memfactory_core.errors import MemFactoryError

app = typer.Typer(
    name="memfactory",
    help="MemFactory: compose, run, train and evaluate memory-augmented LLM agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # paths in errors stay whole


@app.command()
def components(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON with parameter schemas.")
    ] = False,
) -> None:
    """List the registered components with their ports, role and parameters."""
    from memfactory_core.pipeline.spec import component_catalog

    catalog = component_catalog()
    if as_json:
        print(json.dumps(catalog, indent=2))
        return
    for c in catalog:
        ports = f"{', '.join(c['inputs']) or '-'} -> {', '.join(c['outputs']) or '-'}"
        extras = [f"memory: {c['memory']}"] if c["memory"] else []
        extras += [f"role: {c['role']}"] if c["role"] else []
        console.print(f"[bold]{c['name']}[/bold]  {escape('[' + c['stage'] + ']')}  {ports}  "
                      f"{'  '.join(extras)}",
                      highlight=False)
        console.print(f"  {c['description']}", markup=False, highlight=False)
        for key, prop in c["params_schema"].get("properties", {}).items():
            default = prop.get("default")
            shown = "<text>" if isinstance(default, str) and "\n" in default else repr(default)
            console.print(f"    {key} = {shown}  {prop.get('description', '')}",
                          markup=False, highlight=False)
        console.print()


@app.command()
def models(
    prepare: Annotated[
        list[str] | None, typer.Option("--prepare", help="Build or convert this model now.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the built-in models and prepare them (build tiny-random, convert smollm2)."""
    from memfactory_core.llm.models import list_models, prepare_model

    for name in prepare or []:
        path = prepare_model(name)
        err_console.print(f"prepared {name}: {path}")
    infos = list_models()
    if as_json:
        rows = [{**dataclasses.asdict(info), "path": str(info.path)} for info in infos]
        print(json.dumps(rows, indent=2))
        return
    for info in infos:
        state = f"ready at {info.path}" if info.prepared else "not prepared yet"
        console.print(f"[bold]{info.name}[/bold]  {info.description}  ({state})")


@app.command()
def run(
    pipeline: Annotated[str, typer.Argument(help="Preset name or pipeline YAML/JSON file.")],
    context: Annotated[Path, typer.Option(
        "--context", "-c", help="Text file to read, or a LoCoMo/LongMemEval conversation file.")],
    question: Annotated[str, typer.Option("--question", "-q")],
    model: Annotated[str, typer.Option("--model", "-m")] = "tiny-random",
    backend: Annotated[str, typer.Option(help="transformers | vllm | openai")] = "transformers",
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", "-p", help="component.key=value, e.g. token_chunker.chunk_tokens=500"
        ),
    ] = None,
    temperature: float = 0.0,
    seed: int = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the trace as JSON.")] = False,
) -> None:
    """Run a pipeline on one document and one question; print the trace and the answer."""
    from memfactory_core.config import validate_config
    from memfactory_core.data.loaders import run_episode
    from memfactory_core.eval.config import EvalConfig
    from memfactory_core.eval.runner import build_runtime, resolve_pipeline

    episode = run_episode(context, question)  # a text file, or a LoCoMo/LongMemEval file
    params = _component_params(param or [])
    config = validate_config({
        "pipeline": pipeline, "pipeline_params": params,
        "model": {"model": model, "backend": backend},
        "data": {"path": str(context)}, "output_dir": ".",
        "generation": {"temperature": temperature, "seed": seed},
    }, EvalConfig, source="run options")
    resolved = resolve_pipeline(config)
    runtime = build_runtime(config, resolved)
    [result] = runtime.run([episode])
    if as_json:
        print(result.full_trace().model_dump_json(indent=2))
        return
    console.print(result.full_trace().render(), markup=False, highlight=False)
    console.print(f"\n[bold]answer:[/bold] {result.answer}")


@app.command(name="eval", context_settings={"allow_extra_args": True})
def eval_command(
    config: Annotated[Path, typer.Argument(help="Evaluation config YAML.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="dotted.key=value overrides, e.g. data.docs=50")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Evaluate a pipeline; writes OUTPUT_DIR/results.json and prints the summary."""
    from memfactory_core.config import check_output_dir, load_config
    from memfactory_core.eval.config import EvalConfig
    from memfactory_core.eval.runner import evaluate

    cfg = load_config(config, list(overrides or []), EvalConfig)
    check_output_dir(cfg.output_dir)
    results = evaluate(cfg, progress=not quiet)
    summary = results["summary"]
    groups = summary.get("by_docs") or {str(cfg.data.docs): summary}
    for docs, s in groups.items():
        console.print(
            f"docs={docs} n={s['n']}  em={s['em']:.3f} {_ci(s['em_ci95'])}  "
            f"sub_em={s['sub_em']:.3f} {_ci(s['sub_em_ci95'])}  "
            f"f1={s['f1']:.3f} {_ci(s['f1_ci95'])}  boxed={s['boxed_rate']:.2f}  "
            f"{s['seconds_per_question']} s/question"
        )
    console.print(f"results: {Path(cfg.output_dir) / 'results.json'}")


@app.command(context_settings={"allow_extra_args": True})
def recall(
    config: Annotated[Path, typer.Argument(help="Evaluation config YAML of a pipeline with "
                                                "a retriever and a reranker.")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="dotted.key=value overrides, e.g. "
                            "pipeline_params.reranker.checkpoint=runs/x/best"),
    ] = None,
    k: Annotated[list[int] | None, typer.Option("--k", help="Recall@k to report (repeat); "
                                                            "default: the config's recall_at.")
                 ] = None,
) -> None:
    """Recall@k of the retriever alone vs with the reranker on the same questions, with the
    paired bootstrap 95% interval of the difference; writes OUTPUT_DIR/recall.json."""
    from memfactory_core.config import check_output_dir, load_config
    from memfactory_core.eval.config import EvalConfig
    from memfactory_core.rerank.evaluate import recall_report, write_recall

    cfg = load_config(config, list(overrides or []), EvalConfig)
    check_output_dir(cfg.output_dir)
    result, path = write_recall(cfg, ks=list(k) if k else None)
    for line in recall_report(result):
        console.print(line, markup=False, highlight=False)
    console.print(f"results: {path}", markup=False, highlight=False)


@app.command(context_settings={"allow_extra_args": True})
def train(
    config: Annotated[Path, typer.Argument(help="Training config YAML.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="dotted.key=value overrides, e.g. max_steps=20")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Train into a non-empty OUTPUT_DIR, removing "
                                               "an earlier run's checkpoints, metrics and "
                                               "samples first.")
    ] = False,
) -> None:
    """Train a pipeline's policy roles with GRPO (LoRA); writes OUTPUT_DIR/metrics.jsonl,
    samples/ and checkpoint-N/. Ctrl-C or SIGTERM stops at the next step and saves a checkpoint.
    A non-empty OUTPUT_DIR is refused unless the config says `resume=true` (continue from
    its latest checkpoint) or --overwrite is given."""
    import signal

    from memfactory_core.config import load_config
    from memfactory_core.training.callbacks import (
        ConsoleCallback,
        JsonlCallback,
        ReportToCallback,
        StopCallback,
    )
    from memfactory_core.training.config import TrainConfig
    from memfactory_core.training.reranker_trainer import build_trainer

    cfg = load_config(config, list(overrides or []), TrainConfig)
    prepare_train_output(cfg.output_dir, resume=cfg.resume, overwrite=overwrite)
    stop = StopCallback()
    callbacks = [ConsoleCallback(enabled=not quiet), JsonlCallback(), stop]
    if cfg.report_to:
        callbacks.append(ReportToCallback(cfg.report_to))
    trainer = build_trainer(cfg, callbacks)

    def _on_signal(signum: int, frame: object) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        err_console.print("stopping after this step (Ctrl-C again to abort)")
        stop.request()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = trainer.train()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    last = summary["last_metrics"]
    state = "stopped" if summary["stopped"] else "done"
    console.print(f"{state} at step {summary['steps']} in {summary['seconds']:.1f} s; "
                  f"last reward {last.get('reward', float('nan')):.3f}")
    console.print(f"metrics: {Path(cfg.output_dir) / 'metrics.jsonl'}")
    console.print(f"checkpoint: {summary['checkpoint']}")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A training run's output_dir.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Model folder (default RUN_DIR/merged).")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint folder (default: the latest).")
    ] = None,
) -> None:
    """Merge a run's LoRA adapter into its base model: a folder eval and run accept."""
    from memfactory_core.training.export import export_merged

    out = export_merged(run_dir, output, checkpoint)
    console.print(f"merged model: {out}")


#: what a training run writes into its output folder (removed by ``train --overwrite``)
TRAIN_OUTPUTS = ("checkpoint-*", "metrics.jsonl", "samples", "rollout_adapter", "runs",
                 "train_config.json", "merged", "wandb", "best")


def prepare_train_output(output_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to train into a folder that holds anything unless resuming or overwriting (an
    earlier run's checkpoints would be taken for this run's); ``overwrite`` removes what a
    training run writes there and leaves other files alone."""
    from memfactory_core.config import check_output_dir

    folder = check_output_dir(output_dir)
    if resume and overwrite:
        raise MemFactoryError("give resume=true or --overwrite, not both")
    if resume or not folder.is_dir():
        return
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return
    if not overwrite:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more"
                                          if len(entries) > 5 else "")
        raise MemFactoryError(
            f"output_dir {str(folder)!r} is not empty ({shown}): add resume=true to continue "
            "from its latest checkpoint, --overwrite to replace the earlier run, or choose "
            "another output_dir")
    import shutil

    for pattern in TRAIN_OUTPUTS:
        for p in folder.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


def _component_params(items: list[str]) -> dict[str, dict[str, object]]:
    """``component.key=value`` pairs; a value is JSON when it parses as JSON, else text."""
    out: dict[str, dict[str, object]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        component, dot, name = key.partition(".")
        if not sep or not dot or not component or not name:
            raise MemFactoryError(f"--param {item!r} is not of the form component.key=value")
        try:
            value: object = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(component, {})[name] = value
    return out


def _ci(ci: list[float]) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _register_command_groups() -> None:
    from app import cli_jobs, cli_ui

    cli_jobs.register(app)
    cli_ui.register(app)


_register_command_groups()


def main() -> None:
    """Console entry point: user errors print one clear message, not a traceback."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        app()
    except MemFactoryError as err:
        _fail(str(err))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError,
            PermissionError) as err:
        # a path given by the user that cannot be used as asked: the message names it
        _fail(f"{err.strerror or type(err).__name__}: {err.filename or ''}".rstrip(": "))


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False)
    sys.exit(2)


if __name__ == "__main__":
    main()
