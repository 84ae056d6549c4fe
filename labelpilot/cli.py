"""The `labelpilot` command."""

from __future__ import annotations

import os

import typer

from labelpilot.logging_setup import setup_logging

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="ML backends for Label Studio and CVAT.")
connect_app = typer.Typer(no_args_is_help=True, help="Register labelpilot with a platform.")
app.add_typer(connect_app, name="connect")


@app.callback()
def _main() -> None:
    setup_logging()
    from backends.offline import configure_ultralytics

    configure_ultralytics()


@app.command()
def serve(
    host: str = typer.Option("0.0.0.0", envvar="LABELPILOT_HOST"),
    port: int = typer.Option(9090, envvar="PORT"),
    workers: int = typer.Option(2, envvar="WORKERS", help="gunicorn worker processes"),
    threads: int = typer.Option(4, envvar="THREADS", help="threads per worker"),
    worker: bool = typer.Option(True, help="also start one RQ worker"),
) -> None:
    """Serve the ML backend (gunicorn) plus an RQ worker; embedded Redis if REDIS_URL is unset."""
    from labelpilot.serving import run_serve

    raise typer.Exit(run_serve(host, port, workers, threads, worker))


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


if __name__ == "__main__":
    app()
