"""The language server for `.cnn` files (`cnnc lsp`), over the Language Server Protocol
(pygls): diagnostics while typing, hover, definitions, references, rename, completion, the
outline, formatting and quick fixes.

    analysis.py  one checked version of a document: its network, syntax tree and names
    index.py     what each name means and where it is used (the language's scopes)
    hover.py     hover texts: shapes, parameters, MACs, what a block call expands to
    complete.py  completion from the text before the cursor (it need not parse)
    fixes.py     quick fixes: the checker's help lines that name an exact change
    server.py    the protocol's side: documents, positions, the features registered
"""
