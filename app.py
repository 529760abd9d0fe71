"""Hugging Face Space entry point: the app is built in ui/ from the settings in Space.yaml."""

from ui.app import main

if __name__ == "__main__":
    main()
