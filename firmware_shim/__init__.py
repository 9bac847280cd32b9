"""firmware_shim: the only package that knows whether it runs on CPython or MicroPython.

One module per capability (files, codec, crypto with the checksum, machine with the clocks, MQTT).
The core (`agent/`) imports these and nothing platform-specific. A gap in the
runtime is handled by catching ImportError/AttributeError here, with a comment
naming what MicroPython lacks; there are no version checks anywhere else.
"""
import sys

IS_MICROPYTHON = sys.implementation.name == "micropython"
