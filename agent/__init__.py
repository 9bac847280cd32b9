"""fleetstage agent: the device core. Pure Python that MicroPython runs; no I/O of its own."""
VERSION = "0.1.0"
