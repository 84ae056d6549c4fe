from labelpilot.cli import app

app()
