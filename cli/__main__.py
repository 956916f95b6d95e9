"""`python -m cli`: the `ts2net` command line."""
from .main import main

if __name__ == "__main__":
    main(prog_name="ts2net")
