"""Jobs behind the command line: each CLI command calls one function here."""
