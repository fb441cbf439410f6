"""`python -m roadseg.cli ...` (and `torchrun -m roadseg.cli train ...`)."""

from roadseg.cli import app

app(prog_name="roadseg")
