# Types of agent.agent_config (checked against the source by tests/test_stubs.py).
from typing import Any

from agent.errors import ConfigError as ConfigError

DEFAULT_RUN_DIR: str

def check_name(field: Any, value: Any) -> Any: ...
def parse_broker(field: Any, url: Any) -> Any: ...

class AgentConfig:
    device_id: str
    fleet: str
    groups: list[str]
    hw: str | None
    broker: Any
    key_file: Any
    state_dir: Any
    state_partition: Any
    environment: Any
    control: Any
    plan_file: Any
    run_dir: Any
    health: Any
    insecure: Any
    clean_session: Any
    password_file: Any
    tls_skip_hostname_check: Any
    def __init__(self, d: Any) -> None: ...

def parse_config(text: str) -> AgentConfig: ...
def load_config(path: str, fs: Any) -> AgentConfig: ...
