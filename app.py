"""Hugging Face Space entry point: the app is built in ui/ from the settings in Space.yaml."""

import sys

from study.config import ConfigError
from ui.app import main
from ui.settings import SettingsError

if __name__ == "__main__":
    try:
        main()
    except (SettingsError, ConfigError) as exc:  # a setting or the study file: the message says which, and where
        sys.exit(f"error: {exc}")
