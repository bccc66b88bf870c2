"""Settings for the whole test session."""

import os

# cnnc's automatic thread count follows the machine's load, and a batch split among threads
# (runtime/executor.py) may round the last bit differently from one thread (a share of the
# batch can take another convolution algorithm). Tests compare processes and calls exactly,
# so they run one thread unless a test sets its own count (tests/runtime/test_threads.py
# and test_split_batch.py do) or names the environment variable itself.
os.environ.setdefault("CNNC_NUM_THREADS", "1")
