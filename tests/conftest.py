"""Settings for the whole test session."""

import os

# cnnc's automatic thread count follows the machine's load, and a batch split among threads
# (runtime/executor.py) may round the last bit differently from one thread (a share of the
# batch can take another convolution algorithm). Tests compare processes and calls exactly,
# so they run one thread unless a test sets its own count (tests/runtime/test_threads.py
# and test_split_batch.py do) or names the environment variable itself.
os.environ.setdefault("CNNC_NUM_THREADS", "1")


# The files whose tests take ten seconds or more each on two cores (`pytest --durations=60`:
# the documents' shell sessions, which start Ray five times in docs/scale.md, the Ray tests,
# the fuzzers, the formatter over generated models, torchvision models through ONNX). They
# run first, so that pytest-xdist's workers share them out at the start instead of one
# worker finishing a minute-long test while the other waits at the end.
SLOW_FIRST = ("tests/test_docs.py", "tests/distributed/", "tests/dsl/test_format.py",
              "tests/interop/test_onnx_import.py", "tests/cli/test_fuzz.py",
              "tests/cli/test_hard_sources.py")


def pytest_collection_modifyitems(session, config, items):
    def rank(item):  # heaviest group first; a stable sort keeps the order within a group
        for at, prefix in enumerate(SLOW_FIRST):
            if item.nodeid.startswith(prefix):
                return at
        return len(SLOW_FIRST)

    items.sort(key=rank)
