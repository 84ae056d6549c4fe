"""What gunicorn serves: the WSGI app (`labelpilot.wsgi`) behind uvicorn's event loop.

gunicorn's threaded worker hands every accepted connection to a thread at once, so a few
hundred idle or half-sent connections take all threads and even `/health` stops answering.
Under uvicorn an idle connection costs one coroutine; a request reaches a thread of the pool
(THREADS per worker process) only once its headers are complete.
"""

from a2wsgi import WSGIMiddleware

from labelpilot.wsgi import app as wsgi_app
from labelpilot.wsgi import settings

app = WSGIMiddleware(wsgi_app, workers=settings.threads)  # type: ignore[arg-type]
