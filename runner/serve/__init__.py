"""Reading runs from outside: the web view (app, tail, try-out) and ``runner status``."""
