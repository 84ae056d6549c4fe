"""CVAT: a nuclio-compatible function server, cvat-sdk function modules, training from CVAT.

- `facade`: the nuclio dashboard endpoints CVAT's lambda manager calls (a Flask blueprint in
  the main app), with `catalog` deciding which functions exist (re-read on every call).
- `detector`, `interactor`, `tracker`: the three function kinds, platform-neutral cores that
  both the facade and the `functions/` cvat-sdk modules use.
- `annotations` + `training`: CVAT shapes → our `Sample`s → the shared training pipeline;
  `webhook`: CVAT's signed webhooks enqueue that training.
"""
