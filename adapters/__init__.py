"""Platform protocols: Label Studio and CVAT payloads in, backend calls, platform shapes out."""
