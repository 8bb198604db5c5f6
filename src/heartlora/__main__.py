"""`python -m heartlora` runs the command-line tool."""

from heartlora.cli import run_program

run_program()
