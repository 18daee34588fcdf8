"""One row → one record: the Caller, the litellm boundary (failures mapped once), retry, limits, budget."""
