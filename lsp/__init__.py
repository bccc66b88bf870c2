"""The language server for `.cnn` files (`cnnc lsp`): diagnostics, hover, definitions,
completion and formatting for editors, over the Language Server Protocol (pygls)."""
