"""Training: dataset building, ultralytics training, evaluation, promotion (RQ jobs)."""
