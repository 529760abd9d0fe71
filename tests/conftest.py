"""Suite-wide settings. Tiny test models run much faster on one thread, and several torch
processes (servers, subprocesses) share the 2 cores: oversubscribed OpenMP threads spin and
can slow a test down by 40x, so every process in the suite uses one intra-op thread."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
