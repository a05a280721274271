"""The sandbox's benchmark harness: `make bench`, or `python -m bench --help`."""
