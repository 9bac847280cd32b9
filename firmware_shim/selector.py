"""A prometheus selector, parsed: the one parser the health config (which checks it
at start) and the Pi's prometheus probe (which applies it per scrape) share.

Pure Python that MicroPython runs (agent.health_config runs there); it lives in
the shim because the shim may import nothing of agent, and the core may import
the shim. Must never: do I/O.
"""


def parse_selector(text):
    """'name' or 'name{label="v",other="w"}' -> (name, labels); ValueError(why)."""
    if "{" not in text:
        return text.strip(), {}
    name, rest = text.split("{", 1)
    if not rest.endswith("}"):
        raise ValueError("selector {!r} is missing its closing '}}'".format(text))
    labels = {}
    for item in rest[:-1].split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError("selector {!r}: labels are name=\"value\"".format(text))
        k, v = item.split("=", 1)
        labels[k.strip()] = v.strip().strip('"')
    return name.strip(), labels
