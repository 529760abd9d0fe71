"""The app's settings: `Space.yaml` values, each overridable by one environment variable.

Hugging Face Spaces passes its Variables and Secrets to the app as environment variables, so an
operator changes any setting without editing the repository. The variable of each field is in
`ENV_VARS` (and in the README's table); GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are the names the
Spaces runtime itself sets.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from codec.core.bitstream import DEFAULT_MAX_PIXELS, DEFAULT_MAX_STEPS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILE = ROOT / "Space.yaml"


@dataclass(frozen=True)
class Settings:
    backbone: str = "auto"  # "auto" | hub id | local diffusers folder | "demo" | "tiny"
    adapter: str | None = "auto"  # learned adapter: "auto" = the one shipped with the backbone; path; None
    mode: str = "auto"  # "auto" (learned when an adapter is loaded) | "learned" | "analytic"
    device: str | None = None  # None = cuda when available, else cpu
    dtype: str = "auto"  # "auto" = float16 on CUDA, float32 on CPU | "float32" | "float16" | "bfloat16"
    max_upload_mb: float = 20.0
    max_pixels: int = DEFAULT_MAX_PIXELS  # the padded area (multiples of 64) of an image or a bitstream
    max_steps: int = DEFAULT_MAX_STEPS  # denoising steps a bitstream may ask for
    queue_size: int = 16
    client_queue_burst: int = 6  # queue joins one client address may make at once (ui/guard.py) ...
    client_queue_per_minute: float = 30.0  # ... and then per minute
    concurrency: int = 1  # simultaneous model runs (encode/decode), the rest wait in the queue
    worker: bool = True  # the model in a process of its own (codec/core/isolated.py); off where `spaces` is installed
    worker_memory_mb: int = 12288  # the model process's RLIMIT_DATA
    worker_timeout_s: float = 300.0  # longest model call (one encode, decode or trajectory)
    admin_token_env: str = "ADMIN_TOKEN"  # name of the variable that holds the admin token
    study_file: str | None = "assets/studies/demo.yaml"
    database_url: str | None = None  # None = SQLite file in results_dir
    results_dir: str = "runs/app"  # ignored by git
    server_name: str = "127.0.0.1"
    server_port: int = 7860

    def resolve(self, path: str | None) -> Path | None:
        """A relative path in the settings is relative to the repository root, not the cwd."""
        if path is None:
            return None
        p = Path(path)
        return p if p.is_absolute() else ROOT / p

    @property
    def admin_token(self) -> str | None:
        return os.environ.get(self.admin_token_env) or None


ENV_VARS = {
    "backbone": "APP_BACKBONE",
    "adapter": "APP_ADAPTER",
    "mode": "APP_MODE",
    "device": "APP_DEVICE",
    "dtype": "APP_DTYPE",
    "max_upload_mb": "APP_MAX_UPLOAD_MB",
    "max_pixels": "APP_MAX_PIXELS",
    "max_steps": "APP_MAX_STEPS",
    "queue_size": "APP_QUEUE_SIZE",
    "client_queue_burst": "APP_CLIENT_QUEUE_BURST",
    "client_queue_per_minute": "APP_CLIENT_QUEUE_PER_MINUTE",
    "concurrency": "APP_CONCURRENCY",
    "worker": "APP_WORKER",
    "worker_memory_mb": "APP_WORKER_MEMORY_MB",
    "worker_timeout_s": "APP_WORKER_TIMEOUT_S",
    "admin_token_env": "APP_ADMIN_TOKEN_ENV",
    "study_file": "APP_STUDY_FILE",
    "database_url": "DATABASE_URL",
    "results_dir": "RESULTS_DIR",
    "server_name": "GRADIO_SERVER_NAME",
    "server_port": "GRADIO_SERVER_PORT",
}

_CHOICES = {"mode": ("auto", "learned", "analytic"), "dtype": ("auto", "float32", "float16", "bfloat16")}
_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


class SettingsError(ValueError):
    """A setting with a value the app cannot use; the message names the file or variable."""


def load_settings(path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read `path` (default Space.yaml), then apply the environment variables in `ENV_VARS`."""
    env = os.environ if env is None else env
    path = Path(path) if path is not None else DEFAULT_FILE
    values: dict = {}
    if path.is_file():
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise SettingsError(f"{path}: expected a mapping of setting: value")
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SettingsError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    for name, var in ENV_VARS.items():
        if var in env:
            values[name] = env[var]
    kwargs = {name: _convert(name, value, fields[name].type, path) for name, value in values.items()}
    return Settings(**kwargs)


def _convert(name: str, value, type_name: str, source: Path):
    where = f"setting '{name}' (from {source} or ${ENV_VARS[name]})"
    if isinstance(value, str) and value.strip().lower() in ("", "none", "null") and "None" in type_name:
        return None
    try:
        if type_name == "bool":
            value = _BOOLS[str(value).strip().lower()]
        elif type_name.startswith("int"):
            value = int(value)
        elif type_name.startswith("float"):
            value = float(value)
        elif value is not None:
            value = str(value)
    except (KeyError, TypeError, ValueError):
        kind = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(type_name.split(" ")[0], "a string")
        raise SettingsError(f"{where}: {value!r} is not {kind}") from None
    # Port 0 means "any free port" (tests); every other number must be positive.
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (value < 0 or (value == 0 and name != "server_port")):
        raise SettingsError(f"{where}: must be positive, got {value}")
    if name in _CHOICES and value not in _CHOICES[name]:
        raise SettingsError(f"{where}: must be one of {', '.join(_CHOICES[name])}, got {value!r}")
    return value
