"""Model runtimes. Knows nothing of Label Studio or CVAT: images in, our own shape types out."""
