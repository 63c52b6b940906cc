"""The command line: a thin layer over the library. User mistakes exit 2 with one line, never a traceback.

Exit codes: 0 done; 2 a user error, a damaged or unwritable store (one line on stderr, ``error: ...``);
1 an unexpected error in mobench or a plugin (one line; ``MOBENCH_DEBUG=1`` shows the traceback);
130 interrupted (Ctrl-C or SIGTERM: the run's manifest says ``interrupted`` and the same command resumes).
Text from users and plugins is never read as rich markup.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import click

from mobench.api import MobenchError

EXIT_USER_ERROR = 2
EXIT_BUG = 1
EXIT_INTERRUPTED = 130


def _stderr():
    from rich.console import Console

    # Bound to the stream of now: during a run sys.stderr is the library log (mobench.logs), not the console.
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


class RichProgress:
    """The runner's progress reporter: one rich bar per long step (grid points, training, generation).

    Where stderr is not a terminal (a log file, CI) rich draws no bars, so each step logs one line when it
    starts and one when it ends, with its count and seconds: a long CPU run's log says where it is.
    """

    def __init__(self, progress, log: bool = False):
        self._progress = progress
        self._log = log

    def step(self, description: str, total: int | None = None):
        task_id = self._progress.add_task(description, total=total)
        progress, log = self._progress, self._log
        started = time.perf_counter()
        if log:
            progress.console.log(f"{description}: started" + (f" ({total})" if total is not None else ""), markup=False)

        class _Step:
            done = 0

            def advance(self, n: int = 1) -> None:
                self.done += n
                progress.advance(task_id, n)

            def close(self) -> None:
                progress.update(task_id, visible=False)
                if log:
                    count = f"{self.done}/{total}" if total is not None else str(self.done)
                    progress.console.log(f"{description}: {count} in {time.perf_counter() - started:.1f} s", markup=False)

        return _Step()


def _registry(ctx: click.Context):
    return ctx.obj["pm"].registry


def _verbose(ctx: click.Context) -> bool:
    return bool(isinstance(ctx.find_root().obj, dict) and ctx.find_root().obj.get("verbose"))


def _dtype_option(f):
    """--dtype for a command that loads a model: float32, bfloat16, float16, or auto (the device's default)."""
    from mobench.models import DTYPES

    return click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
                        help="Precision of the models loaded to train and decode (auto: fp32 on CPU, bf16 on CUDA; trained pieces are cached per precision).")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plugins-dir", type=click.Path(), default=None, help="Also load every *.py plugin file in DIR.")
@click.option("--verbose", "-v", is_flag=True,
              help="Also show the libraries' output (warnings, logging, progress bars) on the console; it always goes to the run's log file.")
@click.version_option(package_name="mobench")
@click.pass_context
def cli(ctx: click.Context, plugins_dir: str | None, verbose: bool) -> None:
    """mobench: compare multi-objective alignment methods on one preference grid.

    \b
    Exit codes: 0 done; 2 a bad input, a damaged or unwritable store (one line on stderr);
    1 an unexpected error in mobench or a plugin (one line; MOBENCH_DEBUG=1 shows the traceback);
    130 interrupted (Ctrl-C or SIGTERM; the run's manifest says interrupted and the same command resumes).
    Library output (warnings, logging, progress bars) goes to the run's run.log, not the console (-v shows it too).
    """
    if isinstance(ctx.obj, dict):
        ctx.obj["verbose"] = verbose


@cli.command()
@click.option("--method", "-m", required=True, help="Method name (see `mobench list methods`).")
@click.option("--task", "-t", required=True, help="Task name (see `mobench list tasks`).")
@click.option("--scale", default="tiny", show_default=True, help="tiny (CPU, offline) or paper (GPU, hub models).")
@click.option("--grid", type=int, default=None, help="Points per simplex edge (2 objectives, 11: w_1 = 0, 0.1, ..., 1).")
@click.option("--weights", default=None, help='Explicit preference points, e.g. "0.2,0.8;0.5,0.5".')
@click.option("--limit", type=int, default=None, help="Use only the first N evaluation prompts.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--results", default="results", show_default=True, help="Results store folder.")
@click.option("--resume", "resume", default=None, help="Continue the run RUN_ID with its own settings.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available).")
@click.option("--option", "-o", "options", multiple=True,
              help="Method option KEY=VALUE (repeatable); see `mobench options METHOD`. Values are text, converted to the option's type.")
@click.option("--shard", default=None, metavar="I/N",
              help="Compute only the grid points of index I modulo N; the run id stays the full grid's (sweeps split per-point methods this way).")
@_dtype_option
@click.option("--gen", "gen", multiple=True, metavar="KEY=VALUE,...",
              help="Override the task's decoding settings: max_new_tokens, do_sample, temperature, top_p, batch_size (part of the run id).")
@click.pass_context
def run(ctx, method, task, scale, grid, weights, limit, seed, results, resume, device, options, shard, dtype, gen):
    """Run one method over the task's preference grid and store the scored rows."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mobench.api import RunContext
    from mobench.logs import library_output
    from mobench.runner import RunConfig, execute
    from mobench.store import Store

    parsed = parse_option_items(options)
    overrides = parse_option_items([part for item in gen for part in item.split(",") if part.strip()], flag="--gen")
    if resume is not None:
        given = [f"--{name.replace('_', '-')}" for name in ("grid", "weights", "limit", "seed", "scale", "options", "dtype", "gen")
                 if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)]
        if given:
            shown = ", ".join("-o" if g == "--options" else g for g in given)
            raise MobenchError(f"--resume continues a run with its own settings; drop {shown} (or start a new run without --resume)")
    config = RunConfig(method=method, task=task, scale=scale, grid=grid, weights=weights, limit=limit, seed=seed, options=parsed,
                       dtype=None if dtype == "auto" else dtype, gen=overrides)
    console = _stderr()
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # SIGTERM (a CI timeout, `kill`) ends a run like Ctrl-C: recorded as interrupted, exit 130.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with Progress(*columns, console=console, transient=False, redirect_stdout=False, redirect_stderr=False) as progress, \
                library_output(verbose=_verbose(ctx)) as log:
            context = RunContext(seed=seed, device=device, progress=RichProgress(progress, log=not console.is_terminal),
                                 library_log=log)
            result = execute(config, _registry(ctx), Store(results), context, resume=resume, shard=parse_shard(shard),
                             on_event=lambda m: _event(console, m))
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo(
        f"{result.run.path}: {result.computed} grid points computed, {result.skipped} already there, "
        f"{result.total} in the grid"
    )


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``--shard I/N`` as ``(I, N)`` with 0 <= I < N (None when not given)."""
    if text is None:
        return None
    index, sep, count = text.partition("/")
    try:
        parsed = (int(index), int(count))
    except ValueError:
        parsed = None
    if not sep or parsed is None or not (parsed[1] >= 1 and 0 <= parsed[0] < parsed[1]):
        raise MobenchError(f"--shard takes I/N with 0 <= I < N (like 0/4), not {text[:40]!r}")
    return parsed


@cli.command(name="sweep")
@click.argument("spec_file", required=False, type=click.Path(dir_okay=False))
@click.option("--methods", default=None, help="Methods, comma-separated (a,b).")
@click.option("--tasks", default=None, help="Tasks, comma-separated (hh,summarize).")
@click.option("--seeds", default=None, help="Seeds, comma-separated (0,1,2).")
@click.option("--scale", default=None, help="tiny (default) or paper.")
@click.option("--executor", default=None,
              help="local (default: a process pool, one GPU per job), slurm, debug (in this process), a submitit plugin's cluster, or module:factory.")
@click.option("--results", default=None, help="Results store folder (default: results).")
@click.option("--grid", type=int, default=None, help="Points per simplex edge (default: each task's).")
@click.option("--limit", type=int, default=None, help="Use only the first N evaluation prompts.")
@click.option("--device", default=None, help="cpu, cuda ... for every job (default: cuda when available).")
@click.option("--option", "-o", "options", multiple=True,
              help="KEY=VALUE for every method, METHOD:KEY=VALUE for one (repeatable).")
@click.option("--jobs", type=int, default=None, help="local: jobs at once (default: one per GPU, else one per 4 CPU cores).")
@click.option("--shards", type=int, default=None, help="Per-point methods (MORLHF, MODPO): jobs per run (default: jobs at once).")
@click.option("--partition", default=None, help="slurm: partition.")
@click.option("--gpus-per-job", type=int, default=None, help="slurm: GPUs per job (default 1).")
@click.option("--time-min", type=int, default=None, help="A job's time limit in minutes (default: 120 on slurm, a week locally).")
@click.option("--array-parallelism", type=int, default=None, help="slurm: array tasks running at once (default 32).")
@_dtype_option
@click.option("--gen", "gen", multiple=True, metavar="KEY=VALUE,...", help="Decoding overrides of every run (as `mobench run --gen`).")
@click.pass_context
def sweep_cmd(ctx, spec_file, methods, tasks, seeds, scale, executor, results, grid, limit, device, options, jobs, shards,
              partition, gpus_per_job, time_min, array_parallelism, dtype, gen):
    """Run methods x tasks x seeds (flags or a YAML SPEC_FILE): shared pieces trained once, then the runs; resumable."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mobench import sweep as sweeping

    data: dict = {}
    if spec_file is not None:
        from dataclasses import asdict

        data = asdict(sweeping.SweepSpec.from_yaml(spec_file))
    flags = {"methods": methods, "tasks": tasks, "seeds": seeds, "scale": scale, "executor": executor,
             "results": results, "grid": grid, "limit": limit, "device": device, "jobs": jobs, "shards": shards,
             "dtype": None if dtype in (None, "auto") else dtype}
    data.update({k: v for k, v in flags.items() if v is not None})
    slurm = {"partition": partition, "gpus_per_job": gpus_per_job, "time_min": time_min, "array_parallelism": array_parallelism}
    data["slurm"] = {**data.get("slurm", {}), **{k: v for k, v in slurm.items() if v is not None}}
    if gen:
        data["gen"] = {**data.get("gen", {}), **parse_option_items([p for item in gen for p in item.split(",") if p.strip()], flag="--gen")}
    for method, values in sweeping.parse_sweep_options(list(options)).items():
        data.setdefault("options", {}).setdefault(method, {}).update(values)
    data.setdefault("methods", [])
    data.setdefault("tasks", [])
    spec = sweeping.SweepSpec.from_dict(data, "the sweep")
    plugins_dir = ctx.find_root().params.get("plugins_dir") or spec.plugins_dir
    spec.plugins_dir = str(Path(plugins_dir).resolve()) if plugins_dir else None  # the jobs load the same plugins
    console = _stderr()
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            view = sweeping.MatrixProgress(progress, spec.results, log=not console.is_terminal)
            outcome = sweeping.sweep(spec, _registry(ctx), view, say=lambda m: _event(console, m))
    finally:
        signal.signal(signal.SIGTERM, previous)
    from mobench import report

    for task in spec.tasks:
        try:
            board = _entries(ctx, task, spec.results, spec.scale)
        except MobenchError as err:  # no complete run of this task: the failures below say why
            console.print(f"note: no leaderboard for {task}: {err}", markup=False, soft_wrap=True)
            continue
        report.print_table(board, _console())
    failures = outcome.failures
    click.echo(f"sweep: {len(outcome.prepared)} prepare jobs, {len(outcome.ran)} run jobs, {len(failures)} failed "
               f"(logs in {Path(spec.results) / '.sweep' / 'logs'})")
    if failures:
        job, error = failures[0]
        raise MobenchError(f"{len(failures)} job(s) failed, first {job.name}: {error}; rerun the same sweep to retry them")


def _event(console, message: str) -> None:
    """A runner event: notes and warnings as one plain line, progress as a timestamped log line."""
    if message.startswith(("note:", "warning:")):
        console.print(message, markup=False, soft_wrap=True)
    else:
        console.log(message, markup=False)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def parse_option_items(items, flag: str = "--option") -> dict[str, str]:
    """``["k=v", ...]`` from repeated ``-o`` flags as ``{k: v}`` (text; the method's Options converts it)."""
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            shown = item if len(item) <= 60 else item[:57] + "..."
            raise MobenchError(f"{flag} {shown!r} must look like KEY=VALUE")
        parsed[key.strip()] = value
    return parsed


@cli.command(name="options")
@click.argument("method")
@click.option("--scale", default="tiny", show_default=True, help="Show the values at this scale.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def options_cmd(ctx, method, scale, fmt):
    """List METHOD's options: key, type, value at --scale, default, and what it does."""
    from mobench.api import SCALES
    from mobench.runner import build_options

    if scale not in SCALES:
        raise MobenchError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    spec = _registry(ctx).method(method)
    # The values a run would use: the runner's own resolution (preset, then the registration's fixed values).
    at_scale = build_options(spec, scale, {})
    rows = [] if at_scale is None else [{**row, "value": at_scale.get(row["key"])} for row in type(at_scale).describe(scale)]
    if fmt == "json":
        click.echo(json.dumps({"method": method, "scale": scale, "options": rows}, indent=2, default=str))
        return
    if not rows:
        click.echo(f"{method} takes no options")
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{escape(method)} options at scale {scale} (set with -o KEY=VALUE)")
    for col in ("key", "type", "value", "default", "what it does"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(escape(str(row[k])) for k in ("key", "type", "value", "default", "doc")))
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)


@cli.command(name="calibrate")
@click.option("--task", "-t", required=True, help="Any registered task, third-party ones included.")
@click.option("--scale", default="tiny", show_default=True)
@click.option("--device", default=None, help="cpu, cuda, ... (default: automatic)")
@_dtype_option
@click.pass_context
def calibrate_cmd(ctx, task, scale, device, dtype):
    """Compute TASK's normalisation and reference point from its reference policy and write its calibration file."""
    from mobench.api import SCALES, RunContext
    from mobench.artifacts import cache_root
    from mobench.calibration import calibrate_task
    from mobench.logs import library_output

    if scale not in SCALES:
        raise MobenchError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    registry = _registry(ctx)
    registry.task(task)  # an unknown name fails before the log file is made
    context = RunContext(device=device, registry=registry, dtype=None if dtype == "auto" else dtype)
    log = cache_root() / "logs" / f"calibrate-{task}-{scale}.log"
    with library_output(log, verbose=_verbose(ctx)):
        path, record = calibrate_task(registry, task, scale, device, context=context)
    click.echo(f"library output: {log}", err=True)
    for name, stat in record["objectives"].items():
        click.echo(f"{name:<10} mean {stat['mean']:.4f}  std {stat['std']:.4f}  direction {stat['direction']:+d}")
    click.echo(f"reference point {record['reference_point']}  ({record['n_prompts']} prompts, "
               f"generation {record['generation_seconds']} s) -> {path}")


def _entries(ctx, task, results, scale, calibration=None, resamples=None):
    """The task's leaderboard board (one scale and calibration) from the store, for every view below."""
    from mobench.leaderboard import RESAMPLES, build
    from mobench.store import Store

    _registry(ctx).task(task)
    return build(Store(results), task, scale, calibration=calibration, resamples=RESAMPLES if resamples is None else resamples)


def _board_options(f):
    """--results, --scale, --calibration and --resamples, shared by leaderboard, plot, report and compare."""
    f = click.option("--resamples", type=int, default=None, help="Bootstrap resamples over prompts (default 1000, seed 0).")(f)
    f = click.option("--calibration", default=None, help="Rank the runs under this calibration id (default: the newest run's).")(f)
    f = click.option("--scale", default=None, help="Only runs at this scale (needed when the store holds several).")(f)
    return click.option("--results", default="results", show_default=True)(f)


def _console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)  # piped: do not squeeze tables into 80 columns


def _notes(board) -> None:
    for note in board.notes:
        _stderr().print(f"note: {note}", markup=False)


@cli.command(name="kl")
@click.option("--task", "-t", required=True)
@_board_options
@click.option("--prompts", "n_prompts", type=int, default=16, show_default=True,
              help="First evaluation prompts the KL is estimated on (one sampled response each).")
@click.option("--device", default=None, help="cpu, cuda, ... (default: automatic)")
@_dtype_option
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json"]), default="table", show_default=True)
@click.pass_context
def kl_cmd(ctx, task, results, scale, calibration, resamples, n_prompts, device, dtype, fmt):
    """KL(pi || pi_ref) of every trained policy of the leaderboard's runs on TASK (Monte Carlo, cached)."""
    import json as _json

    from mobench.api import RunContext
    from mobench.artifacts import cache_root
    from mobench.kl import policy_kl, trained_policies
    from mobench.logs import library_output
    from mobench.report import md_escape
    from mobench.store import Store

    if n_prompts < 2:
        raise MobenchError(f"--prompts must be at least 2, not {n_prompts}")
    board = _entries(ctx, task, results, scale, calibration, 1)  # which runs are on the board; no CIs needed
    registry = _registry(ctx)
    dtype = None if dtype == "auto" else dtype
    context = RunContext(device=device, registry=registry, dtype=dtype)
    log = cache_root() / "logs" / f"kl-{task}-{board.scale}.log"
    store, rows = Store(results), []
    with library_output(log, verbose=_verbose(ctx)):
        instance = registry.task(task).load(board.scale, context)
        prompts = list(instance.prompts)[:n_prompts]
        length = int(instance.generation.max_new_tokens)
        for entry in board.entries:
            manifest = store.run(task, entry.method, entry.run_id).read_manifest()
            for label, folder in trained_policies(manifest.get("method_provenance") or {}).items():
                kl = policy_kl(instance.policy, folder, prompts, length, device, seed=0, dtype=dtype)
                rows.append({"method": entry.label, "policy": label, "kl": kl["kl"], "stderr": kl["stderr"],
                             "n": kl["n"], "mean_tokens": kl["mean_tokens"], "adapter": folder})
    click.echo(f"library output: {log}", err=True)
    if fmt == "json":
        click.echo(_json.dumps(rows, indent=2))
        return
    if fmt == "markdown":
        click.echo("| method | policy | KL(pi \\|\\| pi_ref) nats | ± s.e. | response tokens |")
        click.echo("|---|---|---:|---:|---:|")
        for r in rows:
            click.echo(f"| {md_escape(r['method'])} | {md_escape(r['policy'])} | {r['kl']:.3f} | {r['stderr']:.3f} | {r['mean_tokens']:.1f} |")
        return
    from rich.table import Table

    table = Table(title=f"KL to the reference policy: {task} ({board.scale}, {len(prompts)} prompts, {length} tokens)")
    for col in ("method", "policy", "KL nats", "± s.e.", "tokens"):
        table.add_column(col, justify="right" if col in ("KL nats", "± s.e.", "tokens") else "left")
    for r in rows:
        table.add_row(r["method"], r["policy"], f"{r['kl']:.3f}", f"{r['stderr']:.3f}", f"{r['mean_tokens']:.1f}")
    _console().print(table)


@cli.command(name="rescore")
@click.option("--task", "-t", required=True)
@click.option("--results", default="results", show_default=True)
@click.option("--scale", default="tiny", show_default=True)
@click.option("--method", "methods", multiple=True, help="Only this method's runs (repeatable; default: every run of the task).")
@click.option("--device", default=None, help="cpu, cuda, ... (where a hub reward model scores; default: automatic)")
@_dtype_option
@click.pass_context
def rescore_cmd(ctx, task, results, scale, methods, device, dtype):
    """Score TASK's stored responses again with its current objectives and calibration (old files kept)."""
    from mobench.api import SCALES, RunContext
    from mobench.artifacts import cache_root
    from mobench.logs import library_output
    from mobench.rescore import load_calibrated, rescore, summary_line
    from mobench.store import Store

    if scale not in SCALES:
        raise MobenchError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    registry = _registry(ctx)
    registry.task(task)
    for m in methods:
        registry.method(m)
    store = Store(results)
    store.ensure(create=False)
    context = RunContext(device=device, registry=registry, dtype=None if dtype == "auto" else dtype)
    log = cache_root() / "logs" / f"rescore-{task}-{scale}.log"
    with library_output(log, verbose=_verbose(ctx)):
        instance = load_calibrated(registry, task, scale, context)
        done = rescore(store, instance, list(methods) or None, on_event=lambda m: _event(_stderr(), m))
    click.echo(f"library output: {log}", err=True)
    for r in done:
        click.echo(summary_line(r))


@cli.command(name="leaderboard")
@click.option("--task", "-t", required=True)
@_board_options
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json"]), default="table", show_default=True)
@click.option("--points", is_flag=True, help="Table format: also show every grid point's z with CIs.")
@click.pass_context
def leaderboard_cmd(ctx, task, results, scale, calibration, resamples, fmt, points):
    """Rank every method with a run on TASK by hypervolume, with 95% bootstrap CIs."""
    from mobench import report

    board = _entries(ctx, task, results, scale, calibration, resamples)
    if fmt == "markdown":
        click.echo(report.to_markdown(board), nl=False)
    elif fmt == "json":
        click.echo(report.to_json(board), nl=False)
    else:
        report.print_table(board, _console(), per_point=points)


@cli.command(name="plot")
@click.option("--task", "-t", required=True)
@_board_options
@click.option("--out", required=True, type=click.Path(), help="PNG file to write.")
@click.pass_context
def plot_cmd(ctx, task, results, scale, calibration, resamples, out):
    """Draw every method's grid points (95% CI bars) and Pareto front in one figure."""
    from mobench import report

    out = report.check_plot_path(out)
    board = _entries(ctx, task, results, scale, calibration, resamples)
    _notes(board)
    click.echo(str(report.plot(board, out)))


@cli.command(name="report")
@click.option("--task", "-t", required=True)
@_board_options
@click.option("--out", required=True, type=click.Path(), help="Folder for leaderboard.md, leaderboard.json, pareto.png, report.html.")
@click.option("--samples", type=int, default=2, show_default=True, help="Generations shown per grid point in report.html.")
@click.pass_context
def report_cmd(ctx, task, results, scale, calibration, resamples, out, samples):
    """Write leaderboard.md, leaderboard.json, pareto.png and one self-contained report.html, for CI to publish."""
    from mobench import report
    from mobench.report_html import write_html
    from mobench.store import Store

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise MobenchError(f"--out {folder} is a file; report writes a folder (leaderboard.md, leaderboard.json, pareto.png, report.html)")
    board = _entries(ctx, task, results, scale, calibration, resamples)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "leaderboard.md").write_text(report.to_markdown(board))
    (folder / "leaderboard.json").write_text(report.to_json(board))
    png = report.plot(board, folder / "pareto.png")
    write_html(board, Store(results), folder / "report.html", png.read_bytes(), per_point=max(0, samples))
    _notes(board)
    click.echo(f"wrote {folder}/leaderboard.md, leaderboard.json, pareto.png, report.html")


@cli.command(name="compare")
@click.option("--task", "-t", required=True)
@_board_options
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json"]), default="table", show_default=True)
@click.pass_context
def compare_cmd(ctx, task, results, scale, calibration, resamples, fmt):
    """HV difference of every pair of methods on TASK with its paired-bootstrap 95% CI."""
    from mobench import report

    board = _entries(ctx, task, results, scale, calibration, resamples)
    if fmt == "markdown":
        click.echo(report.compare_markdown(board), nl=False)
    elif fmt == "json":
        click.echo(report.compare_json(board), nl=False)
    else:
        report.print_compare(board, _console())


@cli.command(name="list")
@click.argument("what", type=click.Choice(["methods", "tasks", "objectives"]))
@click.pass_context
def list_cmd(ctx, what):
    """List the registered methods, tasks or objectives and the plugin that registered each."""
    registry = _registry(ctx)
    table = {"methods": registry.methods, "tasks": registry.tasks, "objectives": registry.objectives}[what]
    kind = what[:-1]
    for name in sorted(table):
        spec = table[name]
        extra = f" [objectives: {', '.join(spec.objectives)}]" if what == "tasks" else ""
        click.echo(f"{name}\t{spec.description}{extra}\t(plugin {registry.owner[(kind, name)]})")


@cli.command(name="plugins")
@click.pass_context
def plugins_cmd(ctx):
    """Print the installed plugins, their origin, version and hooks, as JSON."""
    registry = _registry(ctx)
    out = [
        {"name": p.name, "origin": p.origin, "version": p.version, "hooks": sorted(set(p.hooks))}
        for p in registry.plugins.values()
    ]
    click.echo(json.dumps({"plugins": out, "errors": registry.errors}, indent=2))


def _plugins_dir_from(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--plugins-dir" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--plugins-dir="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mobench`` console script."""
    from rich.markup import escape

    from mobench.plugins import get_plugin_manager
    from mobench.store import CorruptLineWarning

    argv = list(sys.argv[1:] if argv is None else argv)
    console = _stderr()

    def warn_line(message, category, filename, lineno, file=None, line=None):
        # one line each: a corrupt row, a damaged manifest, a library's deprecation notice
        text = " ".join(str(message).split())
        if not issubclass(category, CorruptLineWarning):
            text = f"{category.__name__}: {text}"
        console.print(f"[yellow]warning:[/] {escape(text)}", soft_wrap=True)

    warnings.showwarning = warn_line
    debug = os.environ.get("MOBENCH_DEBUG", "") not in ("", "0")
    try:
        pm = get_plugin_manager(plugins_dir=_plugins_dir_from(argv))
        for error in pm.registry.errors:
            console.print(f"[yellow]warning:[/] {escape(error)}")
        for impl in pm.hook.register_commands.get_hookimpls():
            try:
                impl.function(cli)
            except Exception as exc:  # a broken plugin must not take the CLI down
                console.print(f"[yellow]warning:[/] {escape(f'plugin {impl.plugin_name!r} failed in register_commands: {exc}')}")
        cli.main(args=argv, prog_name="mobench", obj={"pm": pm}, standalone_mode=False)
    except MobenchError as exc:
        # User and plugin text is never read as rich markup ("[/x]" in a path or a message).
        console.print(f"[red]error:[/] {escape(_line(exc))}", soft_wrap=True)
        return EXIT_USER_ERROR
    except (KeyboardInterrupt, click.exceptions.Abort):
        console.print("[red]interrupted[/]: rows already written are kept and the run is marked interrupted; "
                      "the same command resumes it", soft_wrap=True)
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        # click's usage errors are several lines (usage, hint, error): one line here, naming the help
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see `{exc.ctx.command_path} --help`)"
        console.print(f"[red]error:[/] {escape(_line(exc.format_message()) + hint)}", soft_wrap=True)
        return EXIT_USER_ERROR
    except OSError as exc:
        # an unwritable or vanished results folder, a full disk, a bad --out path
        where = f"{exc.filename}: " if exc.filename else ""
        console.print(f"[red]error:[/] {escape(_line(f'{where}{exc.strerror or exc}'))}", soft_wrap=True)
        return EXIT_USER_ERROR
    except Exception as exc:
        if debug:
            raise
        console.print(f"[red]error:[/] {escape(_line(f'unexpected {type(exc).__name__}: {exc}'))} "
                      "(a bug in mobench or a plugin; MOBENCH_DEBUG=1 shows the traceback)", soft_wrap=True)
        return EXIT_BUG
    return 0


def _line(text, limit: int = 1000) -> str:
    """One line of at most ``limit`` characters: an error message never floods the terminal."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def entry() -> None:
    """Console-script wrapper: exit with ``main``'s code."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
