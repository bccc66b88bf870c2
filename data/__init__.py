"""Data sets for `cnnc train` and `cnnc run`: image folders read with Pillow and streamed
from disk in batches."""
