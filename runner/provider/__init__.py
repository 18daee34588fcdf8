"""The litellm boundary: completion functions, endpoints, failures mapped once, headers, prices, tracing."""
