"""`python -m hangpt ...` (and `torchrun -m hangpt pretrain ...`) run the `hangpt` command."""

from .cli import main

main()
