"""File helpers: atomic writes (`atomic`) and strict reading of JSON and YAML documents with
one-line errors (`documents`)."""
