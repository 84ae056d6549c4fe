"""The `labelpilot` command."""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from labelpilot.logging_setup import setup_logging
from labelpilot.settings import Settings, SettingsError, load_settings, secret

if TYPE_CHECKING:
    from labelpilot.backends.model_store import ModelStore

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="ML backends for Label Studio and CVAT.")
connect_app = typer.Typer(no_args_is_help=True, help="Register labelpilot with a platform.")
app.add_typer(connect_app, name="connect")
models_app = typer.Typer(no_args_is_help=True, help="Vet, promote and roll back model versions.")
app.add_typer(models_app, name="models")


def _user() -> str:
    """Who ran the command, for the audit trail ("" when the system cannot say)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.ensure_object(dict)["settings"]
    return settings


@app.callback()
def _main(ctx: typer.Context) -> None:
    """Every command starts from the settings, checked once (a bad value stops here)."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        typer.echo(f"labelpilot: {exc}", err=True)
        raise typer.Exit(2) from None
    ctx.ensure_object(dict)["settings"] = settings
    setup_logging(settings.log_level)
    from labelpilot.backends.offline import configure_ultralytics

    configure_ultralytics()


@app.command()
def serve(
    ctx: typer.Context,
    host: str = typer.Option(None, help="address to bind [LABELPILOT_HOST]"),
    port: int = typer.Option(None, help="port of the Label Studio endpoints [PORT]"),
    workers: int = typer.Option(None, help="gunicorn worker processes [WORKERS]"),
    threads: int = typer.Option(None, help="threads per worker [THREADS]"),
    worker: bool = typer.Option(True, help="also start one RQ worker"),
    cvat_port: int = typer.Option(None, help="port of the CVAT facade (CVAT_NUCLIO_PORT; "
                                  "0: on --port, behind basic auth) [LABELPILOT_CVAT_PORT]"),
    cvat_host: str = typer.Option(None, help="address the CVAT ports bind (default: "
                                  "127.0.0.1) [LABELPILOT_CVAT_HOST]"),
    cvat_direct_ports: str = typer.Option(None, help="port range for CVAT's direct invoke "
                                          "mode, e.g. 32001-32016 [LABELPILOT_CVAT_DIRECT_PORTS]"),
) -> None:
    """Serve the ML backend (gunicorn) plus an RQ worker; embedded Redis if REDIS_URL is unset.
    Options override the settings from the environment."""
    from labelpilot.cvat_commands import serving_ports
    from labelpilot.serving import run_serve

    given = {k: v for k, v in {"host": host, "port": port, "workers": workers,
                               "threads": threads, "cvat_port": cvat_port,
                               "cvat_host": cvat_host,
                               "cvat_direct_ports": cvat_direct_ports}.items() if v is not None}
    try:
        settings = _settings(ctx).with_overrides(**given)
        extra = serving_ports(settings)
    except SettingsError as exc:
        raise typer.BadParameter(str(exc)) from None
    # the server's processes read the same settings: options reach them as variables
    raise typer.Exit(run_serve(settings, worker, extra_ports=extra,
                               extra_env=settings.env_of(given)))


@app.command("worker")
def worker_command(ctx: typer.Context, name: str = typer.Option(
        None, help="the worker's name in RQ (default: a random one)")) -> None:
    """Run an RQ worker for training jobs (start more on other hosts with the same REDIS_URL)."""
    from labelpilot.serving import run_worker

    run_worker(_settings(ctx), name=name)


@app.command("config")
def config_command(ctx: typer.Context, markdown: bool = typer.Option(
        False, help="print the README's configuration tables instead")) -> None:
    """The settings in effect (from the environment; secrets hidden)."""
    from labelpilot.settings import settings_markdown

    if markdown:
        typer.echo(settings_markdown(), nl=False)
        return
    for env, value in _settings(ctx).described():
        typer.echo(f"{env}={value}")


@app.command()
def demo(
    ctx: typer.Context,
    port: int = typer.Option(18080, help="Label Studio port"),
    backend_port: int = typer.Option(9090, help="labelpilot port"),
    model: str = typer.Option("", help="detection weights (default: yolo11n.pt, else offline "
                              "fallback: a small model trained on generated shapes)"),
    wait: bool = typer.Option(True, help="keep running until Ctrl+C (--no-wait: set up, exit)"),
    activity: bool = typer.Option(True, help="offline demo: label the shapes tasks, train two "
                                  "versions and scan, so the dashboard has something to show"),
) -> None:
    """Label Studio + labelpilot + a demo project with pre-annotations, until Ctrl+C."""
    from labelpilot.demo import run_demo

    run_demo(_settings(ctx), ls_port=port, backend_port=backend_port, model=model or None,
             wait=wait, activity=activity)


@connect_app.command("label-studio")
def connect_label_studio(
    ctx: typer.Context,
    project: int = typer.Option(..., help="Label Studio project id"),
    backend_url: str = typer.Option("http://127.0.0.1:9090", help="labelpilot URL as LS sees it"),
    url: str = typer.Option(None, help="Label Studio URL [LABEL_STUDIO_URL]"),
    api_key: str = typer.Option(None, help="LS legacy token or personal access token "
                                "[LABEL_STUDIO_API_KEY]"),
    interactive: bool = typer.Option(False, help="use for interactive (SAM) pre-annotation"),
) -> None:
    """Add labelpilot as the project's ML backend (LS then creates the training webhook)."""
    from labelpilot.adapters.label_studio.client import LabelStudioClient

    settings = _settings(ctx)
    url = url or settings.label_studio_url or ""
    api_key = api_key or secret(settings.label_studio_api_key) or ""
    if not url or not api_key:
        raise typer.BadParameter("give --url and --api-key (or set LABEL_STUDIO_URL and "
                                 "LABEL_STUDIO_API_KEY)")
    admin = LabelStudioClient(url, api_key)
    backend_id = admin.connect_backend(project, backend_url, interactive=interactive)
    typer.echo(f"connected: ML backend {backend_id} on project {project} -> {backend_url}")
    if settings.basic_auth_user:
        typer.echo("note: BASIC_AUTH_USER is set; set the same user/password in LS model settings")


@connect_app.command("cvat")
def connect_cvat(
    ctx: typer.Context,
    backend_url: str = typer.Option("http://labelpilot:8070", help="labelpilot's CVAT port as "
                                    "CVAT's containers reach it (the nuclio facade and the "
                                    "webhook; LABELPILOT_CVAT_PORT)"),
    cvat_url: str = typer.Option(None, help="CVAT's URL: with credentials, the webhook is "
                                 "registered through CVAT's API [CVAT_URL]"),
    project: int = typer.Option(None, help="CVAT project id for the training webhook"),
    organization: str = typer.Option(None, help="or an organization slug (organization-wide "
                                     "webhook) [CVAT_ORG]"),
    webhook_secret: str = typer.Option(None, "--secret", help="webhook secret (the server "
                                       "checks X-Signature-256) [LABELPILOT_CVAT_WEBHOOK_SECRET]"),
) -> None:
    """Print CVAT's settings for labelpilot; register the training webhook when possible."""
    from labelpilot.cvat_commands import connect_cvat_command
    from labelpilot.runtime import cvat_access

    settings = _settings(ctx)
    access = cvat_access(settings).with_url(cvat_url)
    typer.echo(connect_cvat_command(backend_url, access, project,
                                    organization or settings.cvat_org,
                                    webhook_secret or secret(settings.cvat_webhook_secret)))


@app.command()
def train(
    ctx: typer.Context,
    ls_project: int = typer.Option(None, "--ls-project", help="Label Studio project id"),
    cvat_task: int = typer.Option(None, "--cvat-task", help="CVAT task id (CVAT_URL + creds)"),
    cvat_project: int = typer.Option(None, "--cvat-project", help="CVAT project id"),
    task_type: str = typer.Option("", help="CVAT: detect|segment|obb|pose|classify (default: "
                                  "what the labels mostly are)"),
    wait: bool = typer.Option(False, help="run here and wait instead of queueing for a worker"),
) -> None:
    """Train a model now from the current labels of a Label Studio project or a CVAT task."""
    from labelpilot import jobs
    from labelpilot.adapters.label_studio.training import request_project_training
    from labelpilot.redis_conn import connect

    connection = connect(_settings(ctx))
    trigger = {"event": "CLI", "user": _user()}
    if cvat_task is not None or cvat_project is not None:
        from labelpilot.cvat_commands import train_cvat_command

        typer.echo(train_cvat_command(cvat_task, cvat_project, task_type or None, wait, trigger,
                                      train_now=jobs.train_cvat,
                                      request=jobs.cvat_hook(connection)))
        return
    if ls_project is None:
        raise typer.BadParameter("give --ls-project, --cvat-task or --cvat-project")
    if wait:
        result = jobs.train_label_studio(ls_project, trigger)
        typer.echo(f"{result['model_version']}: {result['decision']['reason']}")
        return
    queued = request_project_training(connection, jobs.LABEL_STUDIO_JOB, ls_project, trigger)
    typer.echo(f"{queued.outcome}: job {queued.job_id} (see: labelpilot jobs)")


@app.command("select")
def select_command(
    ctx: typer.Context,
    ls_project: int = typer.Option(None, "--ls-project", help="Label Studio project id"),
    cvat_task: int = typer.Option(None, "--cvat-task", help="CVAT task id (CVAT_URL + creds): "
                                  "the batch becomes a new task in its project"),
    count: int = typer.Option(20, "--count", help="how many tasks (frames) to select"),
    strategy: str = typer.Option("balanced", help="balanced (uncertain, class-balanced, "
                                 "diverse) | uncertainty (least confident first) | random"),
    seed: int = typer.Option(0, help="seed of the random parts (ties, random)"),
) -> None:
    """Choose the unlabelled tasks to label next: in Label Studio they are marked (column
    data.labelpilot_next, Data Manager tab "labelpilot: next to label"); in CVAT they become a
    new task (one job) of the selected frames."""
    from labelpilot.adapters.label_studio.client import LabelStudioApiError
    from labelpilot.adapters.label_studio.connections import Connections
    from labelpilot.adapters.label_studio.selection import select_tasks
    from labelpilot.backends.errors import ModelLoadError, ModelNotFoundError
    from labelpilot.redis_conn import connect
    from labelpilot.runtime import control_defaults, model_locator, model_store, source_policy
    from labelpilot.trainers.selection import SelectionError

    settings = _settings(ctx)
    connection = connect(settings)
    progress = (lambda u: typer.echo(  # noqa: E731
        f"  {u['phase']} {u.get('done', '')}/{u.get('total', '')}" if "done" in u
        else f"  {u['phase']}: {u.get('selected', '')} selected", err=True))
    if cvat_task is not None:
        typer.echo(_select_cvat(settings, connection, cvat_task, count, strategy, seed,
                                progress))
        return
    if ls_project is None:
        raise typer.BadParameter("give --ls-project or --cvat-task")
    try:
        connections = Connections(connection, source_policy(settings))
        connections.require_token(ls_project)
        report = select_tasks(
            ls_project, connections.image_source(ls_project),
            model_store(settings, connection), model_locator(settings), count=count,
            strategy=strategy, seed=seed, device=settings.device,
            max_pixels=settings.max_image_pixels, defaults=control_defaults(settings),
            progress=progress)
    except (SelectionError, ValueError, LabelStudioApiError, ModelNotFoundError,
            ModelLoadError) as exc:
        typer.echo(f"cannot select: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(report.summary())


def _select_cvat(settings: Settings, connection: Any, task: int, count: int, strategy: str,
                 seed: int, progress: Callable[[dict[str, Any]], None]) -> str:
    from labelpilot.adapters.cvat.client import cvat_client
    from labelpilot.adapters.cvat.selection import select_frames
    from labelpilot.runtime import control_defaults, cvat_access, model_locator, model_store
    from labelpilot.trainers.selection import SelectionError

    with _cvat_errors("select", SelectionError):
        report = select_frames(
            cvat_client(cvat_access(settings)), task, model_store(settings, connection),
            model_locator(settings), count=count, strategy=strategy, seed=seed,
            device=settings.device, default_model=control_defaults(settings).model("detect"),
            progress=progress)
    return report.summary()


@contextmanager
def _cvat_errors(verb: str, *expected: type[Exception]) -> Iterator[None]:
    """A CVAT command's errors as one line on stderr and exit status 2: the `expected` ones,
    bad CVAT settings, models that cannot be had, CVAT's error answers, CVAT unreachable."""
    import urllib3
    from cvat_sdk.api_client.exceptions import ApiException

    from labelpilot.adapters.cvat.client import CvatConfigError
    from labelpilot.backends.errors import ModelLoadError, ModelNotFoundError, ModelRefRefused

    known: tuple[type[Exception], ...] = (*expected, CvatConfigError, ModelNotFoundError,
                                          ModelLoadError, ModelRefRefused)
    try:
        yield
    except known as exc:
        message = str(exc)
    except ApiException as exc:
        message = (f"CVAT answered {exc.status} {exc.reason} "
                   f"({str(exc.body or '')[:200]})")
    except urllib3.exceptions.HTTPError as exc:
        message = f"CVAT could not be reached: {exc}"
    else:
        return
    typer.echo(f"cannot {verb}: {message}", err=True)
    raise typer.Exit(2)


@app.command("annotate")
def annotate_command(
    ctx: typer.Context,
    cvat_task: int = typer.Option(..., "--cvat-task", help="CVAT task id (CVAT_URL + creds): "
                                  "a video task or an image sequence"),
    function: str = typer.Option("", "--function", help="the model to run (a file under "
                                 "MODEL_DIR or a release name); default: the task's served "
                                 "detector"),
    tracker: str = typer.Option("bytetrack", help="bytetrack | botsort | ocsort"),
    dry_run: bool = typer.Option(False, "--dry-run", help="track and count, write nothing"),
    clear_existing: bool = typer.Option(False, "--clear-existing",
                                        help="replace the task's annotations"),
) -> None:
    """Detect and track objects through a CVAT task and write them as tracks with keyframes
    (not one shape per frame)."""
    from labelpilot.adapters.cvat.client import cvat_client
    from labelpilot.adapters.cvat.video_tracks import AnnotateError, annotate_task
    from labelpilot.backends.tracking import TrackerError, TrackerSpec, make_tracker
    from labelpilot.redis_conn import connect
    from labelpilot.runtime import control_defaults, cvat_access, model_locator, model_store

    settings = _settings(ctx)
    progress = (lambda u: typer.echo(  # noqa: E731
        f"  {u['phase']} frame {u.get('done')}/{u.get('total')}", err=True))
    with _cvat_errors("annotate", AnnotateError, TrackerError):
        spec = TrackerSpec(tracker)
        make_tracker(spec)
        report = annotate_task(
            cvat_client(cvat_access(settings)), cvat_task,
            model_store(settings, connect(settings)), model_locator(settings),
            default_model=control_defaults(settings).model("detect"), model=function or None,
            tracker=spec, min_iou=settings.video_keyframe_iou, dry_run=dry_run,
            clear_existing=clear_existing, device=settings.device, progress=progress)
    typer.echo(report.summary())


@app.command("frames")
def frames_command(
    ctx: typer.Context,
    video: str = typer.Argument(..., help="a video file or an http(s) URL"),
    method: str = typer.Option("uniform", help="uniform | scene (where the picture changes "
                               "most) | uncertainty (where the served detector is least sure)"),
    count: int = typer.Option(20, "--count", help="how many frames to import"),
    ls_project: int = typer.Option(None, "--ls-project",
                                   help="Label Studio project (an image config)"),
    cvat_project: int = typer.Option(None, "--cvat-project",
                                     help="CVAT project for the new task"),
    cvat_labels: str = typer.Option("", "--cvat-labels", help="or the new task's labels, a,b,c"),
    cvat_task_name: str = typer.Option(None, "--cvat-task-name",
                                       help="default: '<video> · frames (labelpilot)'"),
    framerate: float = typer.Option(None, help="frames per second to number frames by "
                                    "(default: the video's own)"),
    every: int = typer.Option(1, "--every", help="scene/uncertainty: look at every k-th frame"),
) -> None:
    """Turn a video into image tasks worth labelling, each keeping its source video and time."""
    from labelpilot.adapters.label_studio.client import LabelStudioApiError
    from labelpilot.frames_command import run_frames

    progress = (lambda u: typer.echo(  # noqa: E731
        f"  {u['phase']} {u.get('done', '')}/{u.get('total', '')}", err=True))
    with _cvat_errors("import frames", ValueError, LabelStudioApiError):
        summary = run_frames(
            _settings(ctx), video, method=method, count=count, ls_project=ls_project,
            cvat_project=cvat_project,
            cvat_labels=[x.strip() for x in cvat_labels.split(",") if x.strip()],
            cvat_task_name=cvat_task_name, framerate=framerate, candidates_every=every,
            progress=progress)
    typer.echo(summary)


@app.command("label-errors")
def label_errors_command(
    ctx: typer.Context,
    ls_project: int = typer.Option(None, "--ls-project", help="Label Studio project id"),
    cvat_task: int = typer.Option(None, "--cvat-task", help="CVAT task id (CVAT_URL + creds)"),
    cvat_project: int = typer.Option(None, "--cvat-project", help="CVAT project id"),
    folds: int = typer.Option(2, help="fold models (each trains on the other folds)"),
    epochs: int = typer.Option(5, help="epochs per fold model, from the served weights"),
    threshold: float = typer.Option(0.5, help="flag tasks scoring at least this (0..1)"),
    wait: bool = typer.Option(False, help="run here and wait instead of queueing for a worker"),
) -> None:
    """Find annotations that are likely wrong (missing object, wrong class, sloppy box) and
    mark them for review: in Label Studio the column data.labelpilot_review and the tab
    "labelpilot: review"; in CVAT an issue on the frame and region."""
    from labelpilot import jobs
    from labelpilot.adapters.cvat.review import request_cvat_label_errors
    from labelpilot.adapters.label_studio.review import request_label_errors
    from labelpilot.redis_conn import connect
    from labelpilot.trainers.label_error_job import ErrorParams

    options = {"folds": folds, "epochs": epochs, "threshold": threshold}
    try:
        ErrorParams.from_mapping(options)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    cvat = ("task", cvat_task) if cvat_task is not None else (
        ("project", cvat_project) if cvat_project is not None else None)
    if cvat is None and ls_project is None:
        raise typer.BadParameter("give --ls-project, --cvat-task or --cvat-project")
    trigger = {"event": "CLI", "user": _user()}
    if wait:
        try:
            if cvat is not None:
                result = jobs.label_errors_cvat(cvat[0], cvat[1], trigger, options)
            else:
                result = jobs.label_errors_label_studio(ls_project, trigger, options)
        except ValueError as exc:
            typer.echo(f"cannot check: {exc}", err=True)
            raise typer.Exit(2) from exc
        where = (f"{result['issues_opened']} CVAT issues opened" if cvat is not None else
                 f"tab 'labelpilot: review', id {result['view']}")
        typer.echo(f"checked {result['checked']} images, {result['flagged']} flagged for "
                   f"review ({where})")
        return
    connection = connect(_settings(ctx))
    queued = (request_cvat_label_errors(connection, jobs.CVAT_LABEL_ERRORS_JOB, cvat[0],
                                        cvat[1], trigger, options) if cvat is not None else
              request_label_errors(connection, jobs.LABEL_ERRORS_JOB, ls_project, trigger,
                                   options))
    typer.echo(f"{queued.outcome}: job {queued.job_id} (see: labelpilot jobs)")


@app.command("scan")
def scan_command(
    ctx: typer.Context,
    ls_project: int = typer.Option(None, "--ls-project", help="Label Studio project id"),
    cvat_task: int = typer.Option(None, "--cvat-task", help="CVAT task id (CVAT_URL + creds)"),
    wait: bool = typer.Option(False, help="run here and wait instead of queueing for a worker"),
) -> None:
    """Check every image of a project for quality (corrupt, dark, overexposed, blurry,
    near-constant, odd size or bands, duplicates) and mark the findings: in Label Studio the
    column data.labelpilot_quality and the tab "labelpilot: quality"; in CVAT frame tags
    "quality:<finding>". Thresholds: `labelpilot settings PROJECT --quality NAME=VALUE`."""
    from labelpilot.adapters.label_studio.client import LabelStudioApiError
    from labelpilot.scan_command import ScanCommandError, run_scan_command

    if (ls_project is None) == (cvat_task is None):
        raise typer.BadParameter("give one of --ls-project or --cvat-task")
    with _cvat_errors("scan", ValueError, LabelStudioApiError):
        try:
            typer.echo(run_scan_command(_settings(ctx), ls_project=ls_project,
                                        cvat_task=cvat_task, wait=wait, user=_user()))
        except ScanCommandError as exc:
            raise typer.BadParameter(str(exc)) from exc


@app.command("predict")
def predict_command(
    ctx: typer.Context,
    ls_project: int = typer.Option(None, "--ls-project", help="Label Studio project id"),
    cvat_task: int = typer.Option(None, "--cvat-task", help="CVAT task id (CVAT_URL + creds)"),
    only_missing: bool = typer.Option(False, help="leave out tasks that hold any prediction "
                                      "(without it: only those that hold this model version)"),
    model_version: str = typer.Option(None, help="the model_version to predict with, as "
                                      "/setup reports it (default: the one serving now)"),
    shards: int = typer.Option(None, help="RQ jobs that share the run (default: the workers "
                               "listening now)"),
    chunk_size: int = typer.Option(128, help="tasks per chunk (one claim, one bulk write)"),
    wait: bool = typer.Option(False, help="work on the run here until it ends"),
) -> None:
    """Predict every task of a project as an RQ run shared by the workers in chunks; the
    predictions are written to Label Studio in bulk (or as CVAT shapes). Progress: `labelpilot
    jobs`. A task never gets two predictions of one model version."""
    from labelpilot.adapters.label_studio.client import LabelStudioApiError
    from labelpilot.predict_command import (
        PredictCommandError,
        PredictOptions,
        run_predict_command,
    )

    options = PredictOptions(only_missing=only_missing, model_version=model_version,
                             shards=shards, chunk_size=chunk_size, wait=wait)
    with _cvat_errors("predict", PredictCommandError, ValueError, LabelStudioApiError):
        typer.echo(run_predict_command(_settings(ctx), ls_project=ls_project,
                                       cvat_task=cvat_task, options=options,
                                       echo=lambda line: typer.echo(line, err=True)))


@app.command()
def jobs(ctx: typer.Context,
         key: str = typer.Option("", help="only this model key, e.g. ls-3")) -> None:
    """Training, review and video jobs with their progress (phase, epoch, frames)."""
    from labelpilot.redis_conn import connect
    from labelpilot.trainers.queue import jobs as list_jobs

    connection = connect(_settings(ctx))
    for job in list_jobs(connection, key or None):
        meta = job["meta"]
        where = (f"epoch {meta.get('epoch')}/{meta.get('epochs')}"
                 if meta.get("phase") == "training" else meta.get("phase"))
        if meta.get("fold") and meta.get("phase") in ("training", "predicting"):  # per fold
            where = f"fold {meta['fold']}/{meta.get('folds')} {where}"
        if meta.get("phase") == "tracking":
            where = f"tracking frame {meta.get('done')}/{meta.get('total')}"
        if meta.get("phase") == "scanning":
            where = f"scanned {meta.get('done')}/{meta.get('total') or '?'}"
        if str(job["key"]).startswith("predict-") and "run" in meta:  # bulk prediction
            from labelpilot.trainers.bulk_run import job_progress

            where = job_progress(connection, meta)
        extra = f" -> {meta['version']}" if meta.get("version") else ""
        if meta.get("phase") == "done" and "scan_flagged" in meta:
            extra = f" -> {meta['scan_flagged']} with quality findings {meta.get('findings')}"
        if meta.get("phase") == "done" and "flagged" in meta:
            extra = f" -> {meta['flagged']} flagged for review"
        if meta.get("phase") == "done" and "filled" in meta:
            extra = f" -> {meta['filled']} regions filled in annotation {meta.get('annotation')}"
        if meta.get("phase") == "done" and "tracks" in meta:
            extra = (f" -> {meta['tracks']} tracks posted to task {meta.get('task')}"
                     if meta.get("posted") else f" -> not posted: {meta.get('reason')}")
        error = f"  {job['error'][0]}" if job["error"] and job["status"] == "failed" else ""
        typer.echo(f"{job['id']:<48} {job['status']:<10} {where}{extra}{error}")


@app.command()
def settings(
    ctx: typer.Context,
    project: str = typer.Argument(..., help="e.g. ls-3"),
    epochs: int = typer.Option(None), imgsz: int = typer.Option(None),
    batch: int = typer.Option(None), patience: int = typer.Option(None),
    promotion: str = typer.Option(None, help="auto | manual"),
    margin: float = typer.Option(None, help="auto: promote if mAP50-95 is better by this"),
    first_version_floor: float = typer.Option(
        None, help="auto, with nothing comparable serving (a first version): promote only if "
        "holdout mAP50 reaches this (classify: top-1 accuracy this far above chance)"),
    train_every: int = typer.Option(None, help="train after N annotation changes (0: off)"),
    pretrained: str = typer.Option(None, help="weights to transfer into a first version "
                                   "trained from YAML (e.g. a detect model for a pose one)"),
    quality: list[str] = typer.Option(  # noqa: B008 (typer reads the default, never mutates it)
        None, "--quality", help="an image-quality threshold NAME=VALUE, repeatable: dark, "
        "overexposed, clipped, blurry, low_information, min_side, max_aspect, bands, "
        "near_duplicate (e.g. --quality dark=30 --quality bands=1,3,4)"),
    low_quality: str = typer.Option(None, help="training: keep | skip images found dark, "
                                    "overexposed, blurry or near-constant"),
    bands: str = typer.Option(None, help="16-bit / multi-band images: source bands seen as "
                              "R,G,B (1-based, e.g. 4,1,2 for NIR,R,G), 1 for one band as "
                              "gray, or auto (bands 1-3)"),
    stretch: str = typer.Option(None, help="percentiles mapped to 0 and 255 for 16-bit / "
                                "float bands, e.g. 2,98 (0,100: min-max)"),
    slice_px: int = typer.Option(None, "--slice", help="huge images: slice size in px (128 to "
                                 "4096; 0: off) for CVAT detections and training tiles"),
    slice_overlap: float = typer.Option(None, help="share of a slice its neighbour also "
                                        "sees (0 to 0.5, default 0.2)"),
) -> None:
    """Show or change a project's training settings."""
    from labelpilot.redis_conn import connect
    from labelpilot.trainers.settings import save_params

    try:
        params = save_params(connect(_settings(ctx)), project, epochs=epochs, imgsz=imgsz,
                             batch=batch, patience=patience, promotion=promotion,
                             margin=margin, first_version_floor=first_version_floor,
                             train_every=train_every, pretrained=pretrained,
                             low_quality=low_quality, bands=bands, stretch=stretch,
                             slice=slice_px, slice_overlap=slice_overlap,
                             **_quality_options(quality or []))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(" ".join(f"{k}={v}" for k, v in vars(params).items()))


def _quality_options(pairs: list[str]) -> dict[str, str]:
    """`--quality dark=30` → {"quality_dark": "30"}."""
    from labelpilot.backends.quality import QualityThresholds

    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name.strip() not in QualityThresholds.__dataclass_fields__ or not value:
            raise typer.BadParameter(
                f"--quality {pair}: give NAME=VALUE, NAME one of "
                f"{', '.join(QualityThresholds.__dataclass_fields__)}")
        out[f"quality_{name.strip()}"] = value.strip()
    return out


def _num(metrics: dict[str, float]) -> str:
    value = metrics.get("map50_95", metrics.get("accuracy_top1"))
    return "-" if value is None else f"{value:.3f}"


def _metric_name(metrics: dict[str, float]) -> str:
    return "top-1 accuracy" if "accuracy_top1" in metrics else "mAP50-95"


def _store(ctx: typer.Context) -> ModelStore:
    from labelpilot.redis_conn import connect
    from labelpilot.runtime import model_store

    settings = _settings(ctx)
    return model_store(settings, connect(settings))


@models_app.command("list")
def models_list(ctx: typer.Context) -> None:
    """Every model key with its versions, metrics and which one serves."""
    from labelpilot.adapters.admin import describe
    from labelpilot.backends.acceptance import AcceptanceLedger

    store = _store(ctx)
    accepted = {str(row["model_version"]): row
                for row in AcceptanceLedger(store.connection).summary()}
    for key in store.model_keys():
        for v in describe(store, key)["versions"]:
            cand = (v["metrics"] or {}).get("candidate") or {}
            cur = (v["metrics"] or {}).get("current") or {}
            mark = "*" if v["current"] else " "
            typer.echo(f"{mark} {v['model_version']:<28} holdout {_metric_name(cand)} "
                       f"{_num(cand):<6} "
                       f"(served then: {_num(cur):<6}) {(v['decision'] or {}).get('reason', '')}")
            if v["model_version"] in accepted:
                typer.echo(f"    {_acceptance(accepted[v['model_version']])}")
            exports = store.get(key, v["version"]).exports()
            if exports:
                typer.echo(f"    exports: {_exports_line(exports)}")


def _acceptance(row: dict[str, Any]) -> str:
    """One version's acceptance figures, as `models list` prints them."""
    rate = "-" if row["rate"] is None else f"{100 * row['rate']:.0f} %"
    return (f"acceptance {rate}: annotators kept {row['kept']} of {row['predicted']} predicted "
            f"regions, deleted {row['deleted']}, added {row['added']} "
            f"({row['annotations']} annotations)")


@models_app.command("promote")
def models_promote(ctx: typer.Context, key: str, version: str) -> None:
    """Serve `version` of `key` everywhere (hot-swapped by every server)."""
    _store(ctx).promote(key, version, by=f"cli:{_user()}")
    typer.echo(f"{key} -> {version}")


@models_app.command("rollback")
def models_rollback(ctx: typer.Context, key: str) -> None:
    """Go back to the version that served before the current one."""
    version = _store(ctx).rollback(key, by=f"cli:{_user()}")
    typer.echo(f"{key} -> {version.version}")


@models_app.command("export")
def models_export(
    ctx: typer.Context, key: str, version: str,
    format: str = typer.Option("onnx", "--format", help="onnx or openvino"),
    data: str | None = typer.Option(None, help="data yaml to check parity on (versions trained "
                              "before exports keep no holdout)"),
    split: str = typer.Option("val", help="the split of --data"),
    imgsz: int = typer.Option(None, help="input size of the export (default: the training "
                              "size)"),
) -> None:
    """Export a version (ONNX / OpenVINO) after a parity check on its holdout (mAP within
    0.005 of the PyTorch model); LABELPILOT_RUNTIME picks what serves."""
    from labelpilot.trainers.export import ExportError, ExportRequest, export_version

    settings = _settings(ctx)
    request = ExportRequest(key, version, format, data=Path(data) if data else None,
                            split=split, imgsz=imgsz,
                            device=settings.device or "cpu")
    try:
        record = export_version(_store(ctx), request)
    except ExportError as exc:
        typer.echo(f"labelpilot: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{key} {version} -> {record.model_file}\n  {_exports_line({format: record})}")


def _exports_line(exports: dict[str, Any]) -> str:
    """`onnx (holdout mAP50-95 0.824 vs torch 0.824), ...` from a version's export records."""
    parts = []
    for fmt, record in sorted(exports.items()):
        parity = record.info.get("parity") or {}
        ours, torch_ = parity.get(fmt) or {}, parity.get("torch") or {}
        parts.append(f"{fmt} (holdout {_metric_name(ours)} {_num(ours)} vs torch "
                     f"{_num(torch_)})")
    return ", ".join(parts)


@models_app.command("requests")
def models_requests(ctx: typer.Context, project: str = typer.Option(
        None, help="only this project's, e.g. ls-3")) -> None:
    """Retraining requests raised by drift, newest first (approve or reject the ready ones)."""
    import time

    from labelpilot.trainers.drift_monitor import drift_status
    from labelpilot.trainers.retraining import RetrainingRequests

    store = _store(ctx)
    found = RetrainingRequests(store.connection).list(project)
    if not found:
        typer.echo("no retraining requests")
    for r in found:
        raised = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["raised_at"]))
        decided = f" by {r['decided_by']}" if r["decided_by"] else ""
        typer.echo(f"{r['id']}  {r['status']:<9} {r['model_key']} {r['model_version']} -> "
                   f"candidate {r['candidate'] or '-'}  ({r['reason']}, raised {raised} UTC"
                   f"{decided})")
        evidence = r.get("evidence") or {}
        if evidence.get("reasons"):
            typer.echo(f"    {'; '.join(evidence['reasons'])}")
    for key in store.model_keys():
        status = drift_status(store.connection, key)
        if status:
            p_value, drop = status["p_value"], status["confidence_drop"]
            typer.echo(f"drift {key}: {'DRIFT' if status['drifted'] else 'ok'} "
                       f"(p={'-' if p_value is None else f'{p_value:.3f}'}, window "
                       f"{status['window']}, confidence drop "
                       f"{'-' if drop is None else f'{drop:.2f}'}, {status['model_version']})")


def _decide_request(ctx: typer.Context, request_id: str, approve: bool) -> None:
    from labelpilot.trainers.retraining import RetrainingRequests

    store = _store(ctx)
    requests_ = RetrainingRequests(store.connection)
    try:
        done = (requests_.approve(request_id, store, by=f"cli:{_user()}") if approve
                else requests_.reject(request_id, by=f"cli:{_user()}"))
    except (KeyError, ValueError) as exc:
        typer.echo(f"labelpilot: {exc.args[0]}", err=True)
        raise typer.Exit(2) from None
    serving = store.current(done["model_key"])
    typer.echo(f"{done['id']} {done['status']}: {done['model_key']} serves "
               f"{serving.version if serving else 'its default weights'}")


@models_app.command("approve")
def models_approve(ctx: typer.Context, request_id: str) -> None:
    """Approve a ready retraining request: its candidate version serves everywhere."""
    _decide_request(ctx, request_id, approve=True)


@models_app.command("reject")
def models_reject(ctx: typer.Context, request_id: str) -> None:
    """Reject a retraining request: the served version stays."""
    _decide_request(ctx, request_id, approve=False)


if __name__ == "__main__":
    app()
