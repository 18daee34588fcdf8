"""One row -> one record: the Caller built from the call plan, its retry policy, deployments routing."""
