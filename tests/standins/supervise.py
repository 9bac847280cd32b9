"""A stand-in for systemd's Restart=always (CI has no running systemd).

    python supervise.py STATE_DIR UNIT -- COMMAND...

Runs COMMAND, and whenever it exits starts it again after 0.1 s, counting
NRestarts the way systemd does, in STATE_DIR/UNIT.json (read by the
`systemctl` stand-in next to this file). Stops on SIGTERM.
"""
import json
import os
import signal
import subprocess
import sys
import time

state_dir, unit = sys.argv[1], sys.argv[2]
command = sys.argv[sys.argv.index("--") + 1:]
path = os.path.join(state_dir, unit + ".json")
stopping = False
child = None


def write(active, restarts, result="success"):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"ActiveState": active, "NRestarts": restarts, "Result": result}, f)
    os.replace(tmp, path)


def stop(signum, frame):
    global stopping
    stopping = True
    if child is not None and child.poll() is None:
        child.terminate()


signal.signal(signal.SIGTERM, stop)
restarts = 0
write("activating", 0)
while not stopping:
    child = subprocess.Popen(command)
    write("active", restarts)
    child.wait()
    if stopping:
        break
    restarts += 1
    write("activating", restarts, "exit-code")
    time.sleep(0.1)
write("inactive", restarts)
