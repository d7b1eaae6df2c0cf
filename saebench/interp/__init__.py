"""Automated interpretability: LLM clients, latent records and the prompts explainers and judges share."""
