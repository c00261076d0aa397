"""Group ``evaluation``: evaluation_report, the one table of every figure next to its baseline."""
