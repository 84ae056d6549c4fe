"""The Label Studio ML-backend protocol (wire-compatible with label-studio-ml-backend)."""
