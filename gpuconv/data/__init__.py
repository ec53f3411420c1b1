"""Sample data for `python -m gpuconv demo`: grace_hopper_256.png (public domain, see docs/demo.md)."""
