"""python -m codec.evaluate: rate-distortion evaluation over a folder of images (see codec/evaluate/run.py)."""

import sys

from codec.evaluate.run import main

if __name__ == "__main__":
    sys.exit(main())
