"""The offline model, installed as a litellm custom provider for ``local/...`` model names."""
