"""The `labelpilot` command."""

from __future__ import annotations

import os

import typer

from labelpilot.logging_setup import setup_logging

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="ML backends for Label Studio and CVAT.")
connect_app = typer.Typer(no_args_is_help=True, help="Register labelpilot with a platform.")
app.add_typer(connect_app, name="connect")
models_app = typer.Typer(no_args_is_help=True, help="Vet, promote and roll back model versions.")
app.add_typer(models_app, name="models")


@app.callback()
def _main() -> None:
    setup_logging()
    from labelpilot.backends.offline import configure_ultralytics

    configure_ultralytics()


@app.command()
def serve(
    host: str = typer.Option("0.0.0.0", envvar="LABELPILOT_HOST"),
    port: int = typer.Option(9090, envvar="PORT"),
    workers: int = typer.Option(2, envvar="WORKERS", help="gunicorn worker processes"),
    threads: int = typer.Option(4, envvar="THREADS", help="threads per worker"),
    worker: bool = typer.Option(True, help="also start one RQ worker"),
    cvat_port: int = typer.Option(0, envvar="LABELPILOT_CVAT_PORT", help="also serve on this "
                                  "port (e.g. 8070, CVAT_NUCLIO_PORT) for CVAT's network"),
    cvat_direct_ports: str = typer.Option("", envvar="LABELPILOT_CVAT_DIRECT_PORTS", help="port "
                                          "range for CVAT's direct invoke mode, e.g. 32001-32016"),
) -> None:
    """Serve the ML backend (gunicorn) plus an RQ worker; embedded Redis if REDIS_URL is unset."""
    from labelpilot.adapters.cvat.commands import serving_ports
    from labelpilot.serving import run_serve

    extra = serving_ports(cvat_port, cvat_direct_ports)
    raise typer.Exit(run_serve(host, port, workers, threads, worker, extra_ports=extra))


@app.command("worker")
def worker_command() -> None:
    """Run an RQ worker for training jobs (start more on other hosts with the same REDIS_URL)."""
    from labelpilot.serving import run_worker

    run_worker()


@app.command()
def demo(
    port: int = typer.Option(18080, help="Label Studio port"),
    backend_port: int = typer.Option(9090, help="labelpilot port"),
    model: str = typer.Option("", help="detection weights (default: yolo11n.pt, else offline "
                              "fallback: a small model trained on generated shapes)"),
    wait: bool = typer.Option(True, help="keep running until Ctrl+C (--no-wait: set up, exit)"),
) -> None:
    """Label Studio + labelpilot + a demo project with pre-annotations, until Ctrl+C."""
    from labelpilot.demo import run_demo

    run_demo(ls_port=port, backend_port=backend_port, model=model or None, wait=wait)


@connect_app.command("label-studio")
def connect_label_studio(
    project: int = typer.Option(..., help="Label Studio project id"),
    backend_url: str = typer.Option("http://127.0.0.1:9090", help="labelpilot URL as LS sees it"),
    url: str = typer.Option(..., envvar="LABEL_STUDIO_URL", help="Label Studio URL"),
    api_key: str = typer.Option(..., envvar="LABEL_STUDIO_API_KEY", help="LS API token"),
    interactive: bool = typer.Option(False, help="use for interactive (SAM) pre-annotation"),
) -> None:
    """Add labelpilot as the project's ML backend (LS then creates the training webhook)."""
    from labelpilot.ls_admin import LabelStudioAdmin

    admin = LabelStudioAdmin(url, api_key)
    backend_id = admin.connect_backend(project, backend_url, interactive=interactive)
    typer.echo(f"connected: ML backend {backend_id} on project {project} -> {backend_url}")
    if os.environ.get("BASIC_AUTH_USER"):
        typer.echo("note: BASIC_AUTH_USER is set; set the same user/password in LS model settings")


@connect_app.command("cvat")
def connect_cvat(
    backend_url: str = typer.Option("http://labelpilot:9090", help="labelpilot's URL as CVAT's "
                                    "containers reach it (the nuclio facade and the webhook)"),
    cvat_url: str = typer.Option("", envvar="CVAT_URL", help="CVAT's URL: with credentials, "
                                 "the webhook is registered through CVAT's API"),
    project: int = typer.Option(None, help="CVAT project id for the training webhook"),
    organization: str = typer.Option("", envvar="CVAT_ORG", help="or an organization slug "
                                     "(organization-wide webhook)"),
    secret: str = typer.Option("", envvar="LABELPILOT_CVAT_WEBHOOK_SECRET",
                               help="webhook secret (the server checks X-Signature-256)"),
) -> None:
    """Print CVAT's settings for labelpilot; register the training webhook when possible."""
    from labelpilot.adapters.cvat.commands import connect_cvat_command

    typer.echo(connect_cvat_command(backend_url, cvat_url or None, project, organization or None,
                                    secret or None))


@app.command()
def train(
    ls_project: int = typer.Option(None, "--ls-project", help="Label Studio project id"),
    cvat_task: int = typer.Option(None, "--cvat-task", help="CVAT task id (CVAT_URL + creds)"),
    cvat_project: int = typer.Option(None, "--cvat-project", help="CVAT project id"),
    task_type: str = typer.Option("", help="CVAT: detect|segment|obb|pose|classify (default: "
                                  "what the labels mostly are)"),
    wait: bool = typer.Option(False, help="run here and wait instead of queueing for a worker"),
) -> None:
    """Train a model now from the current labels of a Label Studio project or a CVAT task."""
    from labelpilot.adapters.label_studio.training import JOB_FUNC, train_project
    from labelpilot.redis_conn import get_redis
    from labelpilot.trainers.queue import request_training

    trigger = {"event": "CLI", "user": os.environ.get("USER", "")}
    if cvat_task is not None or cvat_project is not None:
        from labelpilot.adapters.cvat.commands import train_cvat_command

        typer.echo(train_cvat_command(cvat_task, cvat_project, task_type or None, wait, trigger))
        return
    if ls_project is None:
        raise typer.BadParameter("give --ls-project, --cvat-task or --cvat-project")
    if wait:
        result = train_project(ls_project, trigger)
        typer.echo(f"{result['model_version']}: {result['decision']['reason']}")
        return
    queued = request_training(get_redis(), f"ls-{ls_project}", JOB_FUNC,
                              {"project_id": ls_project, "trigger": trigger}, trigger)
    typer.echo(f"{queued.outcome}: job {queued.job_id} (see: labelpilot jobs)")


@app.command()
def jobs(key: str = typer.Option("", help="only this model key, e.g. ls-3")) -> None:
    """Training jobs with their progress (phase, epoch, metrics)."""
    from labelpilot.redis_conn import get_redis
    from labelpilot.trainers.queue import jobs as list_jobs

    for job in list_jobs(get_redis(), key or None):
        meta = job["meta"]
        where = (f"epoch {meta.get('epoch')}/{meta.get('epochs')}"
                 if meta.get("phase") == "training" else meta.get("phase"))
        extra = f" -> {meta['version']}" if meta.get("version") else ""
        error = f"  {job['error'][0]}" if job["error"] and job["status"] == "failed" else ""
        typer.echo(f"{job['id']:<48} {job['status']:<10} {where}{extra}{error}")


@app.command()
def settings(
    project: str = typer.Argument(..., help="e.g. ls-3"),
    epochs: int = typer.Option(None), imgsz: int = typer.Option(None),
    batch: int = typer.Option(None), patience: int = typer.Option(None),
    promotion: str = typer.Option(None, help="auto | manual"),
    margin: float = typer.Option(None, help="auto: promote if mAP50-95 is better by this"),
    train_every: int = typer.Option(None, help="train after N annotation changes (0: off)"),
    pretrained: str = typer.Option(None, help="weights to transfer into a first version "
                                   "trained from YAML (e.g. a detect model for a pose one)"),
) -> None:
    """Show or change a project's training settings."""
    from labelpilot.redis_conn import get_redis
    from labelpilot.trainers.settings import save_params

    params = save_params(get_redis(), project, epochs=epochs, imgsz=imgsz, batch=batch,
                         patience=patience, promotion=promotion, margin=margin,
                         train_every=train_every, pretrained=pretrained)
    typer.echo(" ".join(f"{k}={v}" for k, v in vars(params).items()))


def _num(metrics: dict[str, float]) -> str:
    value = metrics.get("map50_95", metrics.get("accuracy_top1"))
    return "-" if value is None else f"{value:.3f}"


def _metric_name(metrics: dict[str, float]) -> str:
    return "top-1 accuracy" if "accuracy_top1" in metrics else "mAP50-95"


@models_app.command("list")
def models_list() -> None:
    """Every model key with its versions, metrics and which one serves."""
    from labelpilot.adapters.admin import describe
    from labelpilot.backends.model_store import ModelStore

    store = ModelStore()
    for key in store.model_keys():
        for v in describe(store, key)["versions"]:
            cand = (v["metrics"] or {}).get("candidate") or {}
            cur = (v["metrics"] or {}).get("current") or {}
            mark = "*" if v["current"] else " "
            typer.echo(f"{mark} {v['model_version']:<28} holdout {_metric_name(cand)} "
                       f"{_num(cand):<6} "
                       f"(served then: {_num(cur):<6}) {(v['decision'] or {}).get('reason', '')}")


@models_app.command("promote")
def models_promote(key: str, version: str) -> None:
    """Serve `version` of `key` everywhere (hot-swapped by every server)."""
    from labelpilot.backends.model_store import ModelStore

    ModelStore().promote(key, version, by=f"cli:{os.environ.get('USER', '')}")
    typer.echo(f"{key} -> {version}")


@models_app.command("rollback")
def models_rollback(key: str) -> None:
    """Go back to the version that served before the current one."""
    from labelpilot.backends.model_store import ModelStore

    version = ModelStore().rollback(key, by=f"cli:{os.environ.get('USER', '')}")
    typer.echo(f"{key} -> {version.version}")


if __name__ == "__main__":
    app()
