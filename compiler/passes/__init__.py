"""The checker's passes, syntax tree to checked network (driven by `compiler/elaborate.py`):

    expand  names.py, values.py, args.py, expand.py: one walk over the statements in source
            order; names are resolved, blocks expanded in place, constants evaluated, and each
            call's arguments bound and typed (with the layer's `check_args` hook). It makes the
            network's nodes with their spec-section-5 names, and the list of shape jobs.
    infer   infer.py, merge.py: the output shape of every node, in order, through the layer's
            hooks (`infer`, `params`, `buffers`, `macs`, `lint`, `rank_help`) and the merge
            rule of `ops.MERGES` (with the producers' `formula` and `fix` hooks in its notes).
    lints   lints.py: unused bindings, blocks and inputs (W402-W404); a network without input
            or output; a `--size` that names no symbol.
    sizes   sizes.py: the values of each size symbol that keep every shape valid (E306).

Every problem goes through one `Reporter` (report.py) as a code of the registry
(`dsl/diagnostics.py`) and the values its message template takes; nothing is raised.
"""
