"""gunicorn's entry point: `gunicorn labelpilot.wsgi:app` (what `labelpilot serve` runs)."""

from labelpilot.app import create_app
from labelpilot.backends.offline import configure_ultralytics
from labelpilot.logging_setup import setup_logging
from labelpilot.redis_conn import connect
from labelpilot.settings import load_settings

settings = load_settings()
setup_logging(settings.log_level)
configure_ultralytics()
app = create_app(settings, connect(settings))
