"""What a job is: its definition (Python module or template), structured outputs, and its evaluation."""
