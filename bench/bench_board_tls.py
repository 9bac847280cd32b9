"""bench board_tls: what mqtts:// adds to the board's heap, from the bundle as built.

The runs of `bench board` (its Lab, boot_run and smallest_heap: `cd BUNDLE &&
micropython main.py`, four signed stage changes through mosquitto, each acked
`applied`), with the board's config.json pointing at a TLS listener of the same
mosquitto: a server certificate for IP:127.0.0.1 from a throw-away EC P-256 CA
made by openssl, which the board verifies against its `tls.ca`, as it must. The
operator session and the observer stay on the plain listener. Each mqtts:// row
stands beside the same bundle on mqtt:// in the same run.

On a board (rp2, esp32) MicroPython's mbedtls allocates on the MicroPython heap;
a standard unix build, the pip port, has it allocate from libc, where a TLS
connection does not show in gc.mem_alloc(). The first rows measure that: the
heap one verified connection holds after its handshake, beside a plain TCP
connection. For a board's figure run it on the port tools/build_micropython32.sh
builds (32-bit, mbedtls on the heap):

    BOARD_MICROPYTHON=SRC/ports/unix/build-x86/micropython .venv/bin/python -m bench board_tls
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from bench.__main__ import figure
from bench.bench_board import (
    KB,
    Lab,
    binary_word_bits,
    boot_run,
    build_board,
    micropython_binary,
    smallest_heap,
)
from firmware_shim.mqtt_paho import free_port

PICO_W_HEAP = 190 * KB  # about what a Pico W (RP2040) has free for MicroPython
TLS_ON_HEAP = 4 * KB  # a verified connection holding less has its buffers elsewhere

# The heap one connection holds, opened as firmware_shim.mqtt_micro opens it.
CONNECTION = r"""
import binascii, gc, socket, ssl, sys
tls = sys.argv[-1] == "tls"
if tls:
    pem = open("CA").read()
    der = binascii.a2b_base64("".join(l for l in pem.splitlines() if "-----" not in l))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=der)
gc.collect()
before = gc.mem_alloc()
s = socket.socket()
s.connect(socket.getaddrinfo("127.0.0.1", PORT)[0][-1])
if tls:
    s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
s.write(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")  # CONNECT
assert s.read(4) == b"\x20\x02\x00\x00", "no CONNACK"
gc.collect()
print(gc.mem_alloc() - before)
"""


def _openssl(cwd: str, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: str) -> dict[str, str]:
    """A CA and the broker's certificate for IP:127.0.0.1 (EC P-256, two days)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(d, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=bench-board-ca")
    _openssl(d, "req", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1")
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    _openssl(d, "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext")
    return {n: os.path.join(d, n) for n in ("ca.crt", "server.crt", "server.key")}


def connection_heap(ca: str, port: int, tls: bool) -> int:
    code = CONNECTION.replace("CA", ca).replace("PORT", str(port))
    proc = subprocess.run([micropython_binary(), "-c", code, "tls" if tls else "plain"],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode:
        raise RuntimeError("the connection probe failed: %s" % (proc.stderr or proc.stdout))
    return int(proc.stdout.strip())


def measure(work: str) -> dict:
    if not shutil.which("openssl"):
        raise RuntimeError("bench board_tls needs openssl (apt-get install openssl)")
    pki = make_pki(work)
    tls_port = free_port()
    listener = ("allow_anonymous true\nlistener %d 127.0.0.1\nallow_anonymous true\n"
                "cafile %s\ncertfile %s\nkeyfile %s\n"
                % (tls_port, pki["ca.crt"], pki["server.crt"], pki["server.key"]))
    mqtts = {"broker": "mqtts://127.0.0.1:%d" % tls_port, "tls": {"ca": "/ca.crt"}}
    lab = Lab(work, broker_extra=listener)
    got: dict = {"conn_tls": connection_heap(pki["ca.crt"], tls_port, True),
                 "conn_plain": connection_heap(pki["ca.crt"], lab.broker.port, False)}
    try:
        for kind, romfs in (("mpy", False), ("rom", True)):
            out = build_board(work, lab.broker.url, romfs=romfs)
            shutil.copy(pki["ca.crt"], os.path.join(out, "ca.crt"))
            image = os.path.getsize(os.path.join(out, "code.romfs")) if romfs else 0
            for link, config in (("plain", {}), ("tls", mqtts)):
                lab.board_config = config
                run = boot_run(lab, out)
                if run is None:
                    raise RuntimeError("the %s board on %s did not boot and apply four stages: "
                                       "%s" % (kind, link, open(lab_log(out, lab)).read()[-800:]))
                got[kind, link] = (run["boot"] - image,
                                   smallest_heap(lab, out, 512 * KB) - image)
    finally:
        lab.close()
    return got


def lab_log(out: str, lab: Lab) -> str:
    return os.path.join(out, "board-%d.log" % lab.runs)


def run(quick: bool = False) -> list[dict]:
    work = tempfile.mkdtemp(prefix="bench-board-tls-")
    try:
        got = measure(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    on_heap = got["conn_tls"] >= TLS_ON_HEAP
    rows = [
        figure("micropython binary (%s; BOARD_MICROPYTHON picks it)" % micropython_binary(),
               binary_word_bits(), "bit", "a Pico W's RP2040", 32),
        figure("one verified TLS connection: heap it holds after the handshake (%s)"
               % ("mbedtls allocates on this heap, as on a board" if on_heap else
                  "mbedtls allocates outside this heap: the mqtts:// rows undercount a board"),
               got["conn_tls"] / KB, "KB", "a plain TCP connection", got["conn_plain"] / KB),
    ]
    for kind, name in (("mpy", ".mpy bundle"), ("rom", "ROMFS bundle (image excluded)")):
        (plain_boot, plain_peak), (tls_boot, tls_peak) = got[kind, "plain"], got[kind, "tls"]
        rows += [
            figure("%s on mqtts://: heap after boot" % name, tls_boot / KB, "KB",
                   "the same on mqtt://", plain_boot / KB),
            figure("%s on mqtts://: smallest heap for a stage change" % name, tls_peak / KB,
                   "KB", "the same on mqtt://", plain_peak / KB,
                   target="<= 190 KB (a Pico W's free heap)", met=tls_peak <= PICO_W_HEAP),
        ]
    return rows
