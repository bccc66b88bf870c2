"""cnnc past one machine, through Ray (the optional extra `cnnc[ray]`): batch inference,
sweeps over `let` constants, and data-parallel training. Ray is imported only here."""
