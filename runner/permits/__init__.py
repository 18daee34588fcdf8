"""What the coordinator grants: limits, buckets, leases, budget, reachability (no litellm here)."""
