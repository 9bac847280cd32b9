"""What the gateway's own applications see: the flag snapshot, in two formats.

Owns: the contents of <run_dir>/flags.json and <run_dir>/flags.flagd.json,
computed from a MigrationControl. Must never: write them (the Pi side does,
atomically, through firmware_shim.app_files) or read a clock (the caller
passes the time).

flags.json: {"revision", "stage", "state", "plan", "flags": {name: bool},
"updated_at"}. The revision is the control's change sequence number: it is
committed with every change of stage, state or flags, so it only grows,
across restarts too, and an application that saw revision r has nothing new
to read while the revision is still r. A reset state dir counts from 1 again:
readers compare revisions for equality, not order.

flags.flagd.json is flagd's flag-definition format: every flag ENABLED, with
boolean variants "on"/"off", and its defaultVariant holds the value. An
OpenFeature application reads it with the flagd provider in file mode.
"""
FLAGD_SCHEMA = "https://flagd.dev/schema/v0/flags.json"


def revision_of(control):
    return control.seq


def iso_utc(wall_s):
    """Seconds since the epoch as 2026-12-01T21:30:00Z (no datetime on MicroPython)."""
    t = int(wall_s)
    days, rest = divmod(t, 86400)
    hh, rest = divmod(rest, 3600)
    mm, ss = divmod(rest, 60)
    # civil-from-days (H. Hinnant), proleptic Gregorian
    z = days + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    if m <= 2:
        y += 1
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (y, m, d, hh, mm, ss)


def snapshot(control, wall_s):
    """The flags.json document for this control, made at wall time wall_s."""
    return {
        "revision": revision_of(control),
        "stage": control.stage,
        "state": control.state,
        "plan": control.plan.name,
        "flags": control.flags.values(),
        "updated_at": iso_utc(wall_s),
    }


def flagd_document(flags):
    """flags {name: bool} -> flagd's flag-definition document."""
    out = {}
    for name in sorted(flags):
        out[name] = {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "on" if flags[name] else "off",
        }
    return {"$schema": FLAGD_SCHEMA, "flags": out}
