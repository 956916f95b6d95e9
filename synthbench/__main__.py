"""``python -m synthbench``: run the generator's command line."""
from .generate import main

if __name__ == "__main__":
    main(prog_name="python -m synthbench")
