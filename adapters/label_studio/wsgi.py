"""gunicorn entry point: `gunicorn adapters.label_studio.wsgi:app`."""

from adapters.label_studio.app import create_app
from backends.offline import configure_ultralytics
from labelpilot.logging_setup import setup_logging

setup_logging()
configure_ultralytics()
app = create_app()
