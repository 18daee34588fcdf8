"""`runner export`: a run's records as one table, in input order, next to the input's own fields."""
