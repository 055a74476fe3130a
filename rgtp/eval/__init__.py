"""Accuracy, cost and speed of dense and pruned runs, in the paper's table form."""
