"""The call itself: requests, responses, the pipeline of stages, providers (LiteLLM), prices, errors."""
