"""The `ts2net` command line: the root click group and one thin module per command family."""
