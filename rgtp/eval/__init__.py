"""What the families' evaluations share (each family's own is one of its tools,
`rgtp.families.<name>.tools`): the pipeline a model is evaluated on, `rgtp eval`'s request,
the printed reports and their tables, held-out synthetic video for `rgtp run --synthetic`."""
