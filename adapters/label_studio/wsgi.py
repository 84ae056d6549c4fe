"""gunicorn entry point: `gunicorn labelpilot.adapters.label_studio.wsgi:app`."""

from labelpilot.adapters.label_studio.app import create_app
from labelpilot.backends.offline import configure_ultralytics

from labelpilot.logging_setup import setup_logging

setup_logging()
configure_ultralytics()
app = create_app()
