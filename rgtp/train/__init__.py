"""What training shares across families: the settings of a run and the optimiser's schedule
(each family's trainer is one of its tools, `rgtp.families.<name>.tools.train`)."""
