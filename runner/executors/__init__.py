"""How rows reach a model: executors take rows from the coordinator and hand back records."""
