"""The subcommands of `cnnc`, one module each, and `common`, the helpers they share.

Every subcommand module exposes two functions; `cli.py` finds the modules here by
themselves (`cli.command_modules`, ordered by ``cli.ORDER``), so adding a subcommand is adding
a module:

    add_parser(sub) -> argparse.ArgumentParser   # registers the subcommand on `sub`
    main(args) -> int                            # runs it; returns the exit status

`main` may raise `common.CommandError`; `cli.py` prints it as `cnnc: error: ...` and exits
with its status.

Modules import nothing heavy at the top (no NumPy, no ONNX): `cnnc check` builds the whole
argument parser on every start, and its start-up time is budgeted.

Exit statuses are those of `common.py`: 0 success, 1 the model has errors (or, for `train`,
training failed), 2 a file cannot be read or written, the model (or a run of it) would not
fit in the memory available, or the command is misused.
"""
