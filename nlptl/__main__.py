"""`python -m nlptl` (what torchrun and `accelerate launch -m nlptl` run)."""

from nlptl.cli import main

if __name__ == "__main__":
    main()
