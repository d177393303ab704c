"""One module per DVC stage; each parses arguments, loads its params sections, runs, saves."""
